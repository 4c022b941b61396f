//! `backfill pause RUN`: stop starting new shards of a run; the shards in hand finish and commit (see `steer`).

use crate::connect::connect_store;
use crate::exit::Exit;
use crate::settings::Settings;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The run id.
    pub run: String,
}

pub async fn run(a: Args, settings: &Settings) -> anyhow::Result<Exit> {
    let store = connect_store(settings, 2).await?;
    crate::steer::pause(&store, &a.run, &settings.operator).await
}
