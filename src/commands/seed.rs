//! `backfill seed`: a shipped job's demo tables, filled with generated data.

use crate::exit::{usage, Exit};
use crate::settings::Settings;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// `certificates` (program-certificate-titles) or `collections` (collection-dict jobs).
    #[arg(long)]
    pub dataset: String,
    /// Certificate-page revisions (certificates dataset).
    #[arg(long, default_value_t = 10_000)]
    pub revisions: u64,
    /// Programs (certificates dataset).
    #[arg(long, default_value_t = 100)]
    pub programs: u32,
    /// Collections (collections dataset).
    #[arg(long, default_value_t = 1_000)]
    pub collections: u64,
    /// Most versions per collection (collections dataset).
    #[arg(long, default_value_t = 8)]
    pub max_versions: u32,
    /// Random seed; the same seed gives the same data.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

pub async fn run(a: Args, settings: &Settings) -> anyhow::Result<Exit> {
    crate::demo::seed(
        settings,
        &a.dataset,
        crate::demo::SeedArgs {
            revisions: a.revisions,
            programs: a.programs,
            collections: a.collections,
            max_versions: a.max_versions,
            seed: a.seed,
        },
    )
    .await
    .map_err(|e| match e.downcast::<crate::demo::UnknownDataset>() {
        Ok(u) => usage(u.to_string()),
        Err(e) => e,
    })
}
