//! The embedded demo given a `--db` it cannot create: a clear error naming
//! the path and what to do, a failing exit code, and nothing left behind.

use std::time::Duration;

use crate::common::{output_within, stderr};

#[test]
fn a_demo_database_in_a_folder_that_does_not_exist_is_refused_naming_it() {
    let dir = std::env::temp_dir().join(format!("bf-demo-{}", uuid::Uuid::new_v4().simple()));
    let db = dir.join("demo.sqlite3");
    let out = output_within(
        {
            let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_backfill"));
            c.args(["demo", "--db", db.to_str().unwrap()])
                .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
                .env("AMQP_URL", "amqp://nobody:x@127.0.0.1:1/%2f")
                .env_remove("RUST_LOG");
            c
        },
        Duration::from_secs(120),
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("create the demo database {}", db.display())),
        "the error names the path: {err}"
    );
    assert!(
        err.contains("its folder must exist") && err.contains("--db PATH"),
        "the error says what to do: {err}"
    );
    assert!(!dir.exists(), "nothing was created");
}
