//! Rebuilds the store when a ledger migration changes: `sqlx::migrate!`
//! embeds `migrations/{postgres,sqlite}` at build time, and cargo does not
//! see the files a macro reads.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
