//! `backfill resume RUN`: carry on with a paused run (see `steer`).

use crate::connect::connect_store;
use crate::exit::Exit;
use crate::settings::Settings;

/// The run, named as `pause` names it.
pub use super::pause::Args;

pub async fn run(a: Args, settings: &Settings) -> anyhow::Result<Exit> {
    let store = connect_store(settings, 2).await?;
    crate::steer::resume(&store, &a.run, &settings.operator).await
}
