//! Quiet when healthy: a command that works prints what it is for and no
//! library noise — no debug dump of the generated data in the demo.

#![allow(clippy::unwrap_used)]

use crate::common::*;
use std::time::Duration;

/// Library noise that must not reach a healthy command's output.
fn assert_no_noise(what: &str, out: &std::process::Output) {
    for (stream, text) in [("stdout", stdout(out)), ("stderr", stderr(out))] {
        for noise in [
            "slow statement",
            "db.statement",
            "CREATE TABLE",
            "INSERT INTO",
            "Stats {",
            "CertificateStats",
        ] {
            assert!(
                !text.contains(noise),
                "{what}: {noise:?} in {stream}:\n{text}"
            );
        }
    }
}

/// The embedded demo (no services: both URLs point at closed ports) says
/// what it generated in a `Seeded:` line, not as a `CertificateStats { … }`
/// debug dump.
#[test]
fn the_demo_prints_what_it_generated_without_a_debug_dump() {
    let dir = std::env::temp_dir().join(format!("bf-quiet-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("demo.sqlite3");
    let out = output_within(
        {
            let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_backfill"));
            c.args(["demo", "--db", db.to_str().unwrap()])
                .args(["--revisions", "300", "--programs", "12"])
                .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
                .env("AMQP_URL", "amqp://nobody:x@127.0.0.1:1/%2f")
                .env_remove("RUST_LOG");
            c
        },
        Duration::from_secs(300),
    );
    eprintln!("{}\n{}", stdout(&out), stderr(&out));
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(0));
    assert_no_noise("demo", &out);
    let text = stdout(&out);
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("Seeded: dataset=certificates programs=12 "))
            .count(),
        1,
        "{text}"
    );
}
