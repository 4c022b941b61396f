//! `backfill prune`: retention of before-images.

use crate::cli::parse::parse_age;
use crate::connect::connect_store;
use crate::exit::{usage, Exit};
use crate::settings::Settings;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Age, e.g. 30d, 12h, 90m, 45s.
    #[arg(long, value_name = "AGE")]
    pub older_than: String,
    /// Delete. Without it, only list what would be deleted.
    #[arg(long)]
    pub commit: bool,
}

pub async fn run(a: Args, settings: &Settings) -> anyhow::Result<Exit> {
    let age = parse_age(&a.older_than).map_err(usage)?;
    let store = connect_store(settings, 2).await?;
    let runs = store
        .prune_before_images(age, a.commit, &settings.operator)
        .await?;
    let (n, bytes) = runs
        .iter()
        .fold((0i64, 0i64), |(n, b), r| (n + r.1, b + r.2));
    for (run, rows, b) in &runs {
        println!("{run}: {rows} before-images, {b} bytes");
    }
    if a.commit {
        println!(
            "pruned {n} before-images ({bytes} bytes of values) of {} runs finished more than {} ago; those runs can no longer be reverted",
            runs.len(),
            a.older_than
        );
    } else {
        println!(
            "would prune {n} before-images ({bytes} bytes of values) of {} runs; add --commit to delete them",
            runs.len()
        );
    }
    Ok(Exit::Clean)
}
