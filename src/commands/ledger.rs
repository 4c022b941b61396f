//! `backfill ledger show | adopt`: the ledger's identity, and giving a
//! ledger copied from another database an identity of its own.

use backfill_store::Store;
use clap::Subcommand;

use crate::connect::{connect_store, ledger_lines};
use crate::exit::Exit;
use crate::settings::Settings;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub action: LedgerAction,
}

#[derive(Debug, Subcommand)]
pub enum LedgerAction {
    /// Print the ledger id, the database it belongs to and the queue names in use.
    Show,
    /// Give a ledger copied from another database (`CREATE DATABASE … TEMPLATE …`, a
    /// restored dump) a new id, so its workers stop taking the other database's work.
    Adopt,
}

pub async fn run(a: Args, settings: &Settings) -> anyhow::Result<Exit> {
    let store = connect_store(settings, 2).await?;
    if let LedgerAction::Adopt = a.action {
        let was = store.ledger().clone();
        if !was.is_copy() {
            eprintln!(
                "ledger {} belongs to this database ({}); nothing to adopt",
                was.id, was.current_database
            );
            return Ok(Exit::Clean);
        }
        let now = store.adopt_ledger().await?;
        store.close().await;
        let store = Store::connect(settings.database_url.expose(), 2).await?;
        let mut fresh = settings.clone();
        fresh.ledger_prefix = Default::default();
        fresh.use_ledger(store.ledger());
        eprintln!(
            "ledger {} copied from database {} is now ledger {} of database {}",
            was.id, was.recorded_database, now.id, now.current_database
        );
        eprint!("{}", ledger_lines(&fresh, &store));
        return Ok(Exit::Clean);
    }
    eprint!("{}", ledger_lines(settings, &store));
    println!("{}", store.ledger().id);
    Ok(Exit::Clean)
}
