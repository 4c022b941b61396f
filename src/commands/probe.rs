//! `backfill probe URL`: a health probe for images without curl.

use std::time::Duration;

use crate::exit::Exit;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The URL to GET (plain HTTP).
    pub url: String,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 5)]
    pub timeout: u64,
}

pub async fn run(a: &Args) -> anyhow::Result<Exit> {
    crate::watch::probe(&a.url, Duration::from_secs(a.timeout)).await
}
