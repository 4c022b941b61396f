//! `backfill cancel RUN`: stop a run for good (see `steer`).

use std::time::Duration;

use crate::connect::connect_store;
use crate::exit::Exit;
use crate::settings::Settings;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The run id.
    pub run: String,
    /// Most seconds to wait for the shards in hand to finish.
    #[arg(long, default_value_t = 120)]
    pub wait_secs: u64,
}

pub async fn run(a: Args, settings: &Settings) -> anyhow::Result<Exit> {
    let store = connect_store(settings, 2).await?;
    crate::steer::cancel(
        &store,
        &a.run,
        &settings.operator,
        Duration::from_secs(a.wait_secs),
    )
    .await
}
