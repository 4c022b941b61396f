//! `backfill demo`: the certificate-titles job end to end on a generated
//! database (see the `demo` module for what it does).

use std::path::PathBuf;

use crate::exit::{usage, Exit};
use crate::settings::Settings;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The SQLite demo file to (re)create [default: backfill-demo.sqlite3 in the temp directory].
    #[arg(long)]
    pub db: Option<PathBuf>,
    /// Run on PostgreSQL (DATABASE_URL's server) and RabbitMQ instead of embedded.
    #[arg(long)]
    pub distributed: bool,
    /// With --distributed: the database to (re)create on the server of DATABASE_URL.
    #[arg(long, default_value = "backfill_demo")]
    pub demo_db: String,
    /// Certificate-page revisions to generate.
    #[arg(long, default_value_t = 2_000)]
    pub revisions: u64,
    /// Programs to generate.
    #[arg(long, default_value_t = 40)]
    pub programs: u32,
    /// Mapper tasks.
    #[arg(long, default_value_t = 2)]
    pub mappers: u16,
    /// The shipped job to show: `program-certificate-titles`, or `wagtail-streamfield`
    /// (renames the `title_2` child of every signatory block to `affiliation`, on the
    /// certificate pages and inside their revisions).
    #[arg(long, value_name = "JOB", default_value = "program-certificate-titles")]
    pub job: String,
}

pub async fn run(a: Args, settings: &Settings) -> anyhow::Result<Exit> {
    if a.mappers == 0 {
        return Err(usage("--mappers must be at least 1"));
    }
    crate::demo::run(
        settings,
        crate::demo::DemoArgs {
            db: a.db,
            distributed: a.distributed,
            demo_db: a.demo_db,
            revisions: a.revisions,
            programs: a.programs,
            mappers: a.mappers,
            job: crate::demo::DemoJob::parse(&a.job).map_err(usage)?,
        },
    )
    .await
}
