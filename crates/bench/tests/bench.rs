//! The benchmark harness of BENCHMARKS.md stays runnable: `backfill-bench`
//! at 20,000 revisions with every contender (limit, per-row, backfill commit
//! with 1 and 2 mapper processes, dry run, messaging, breakdown, memory, and
//! the fold and monitor measurements at small sizes) must exit 0 and report
//! that every contender produced the same database, and its mapper-memory
//! figure must show a batched shard of large rows costing a fraction of the
//! same shard read as one batch. This checks correctness,
//! not speed. Needs PostgreSQL and RabbitMQ (DATABASE_URL,
//! AMQP_URL, or the local defaults); the bench creates and drops its own
//! `bench_*` databases and `bench-*` queues.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PG_HINT: &str = "PostgreSQL is not reachable. Start it with `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` (or run `.ci/run`), or point DATABASE_URL at a server.";
const MQ_HINT: &str = "RabbitMQ is not reachable. Start it with `rabbitmq-server -detached` (or run `.ci/run`), or point AMQP_URL at a broker.";

/// Needs PostgreSQL (and RabbitMQ where it says so): the real-service tier,
/// left out by `--skip tier2`.
mod tier2 {
    use super::*;

    #[test]
    fn bench_at_20k_rows_agrees_on_every_checksum() {
        // `backfill` is the root package's binary: a workspace build (`cargo
        // test --workspace`, as the suite runs) puts it next to this one.
        let bench = env!("CARGO_BIN_EXE_backfill-bench");
        let backfill = std::path::Path::new(bench)
            .with_file_name(format!("backfill{}", std::env::consts::EXE_SUFFIX));
        assert!(
            backfill.exists(),
            "{} is not built: run the suite with `cargo test --workspace`, or build it with `cargo build -p backfill`",
            backfill.display()
        );
        let mut child = Command::new(bench)
            .args([
                "--rows",
                "20000",
                "--programs",
                "40",
                "--mappers",
                "1,2",
                "--messaging-shards",
                "50",
                "--breakdown-shards",
                "5",
                "--memory-rows",
                "10",
                "--memory-row-mib",
                "8",
                // The fold and monitor measurements at their full sizes
                // (100,000 groups, a 10,000-shard run) take minutes in a
                // debug build; small sizes keep them runnable here.
                "--fold-groups",
                "10,300",
                "--fold-shards",
                "5",
                "--monitor-shards",
                "200",
                "--monitor-groups",
                "500",
                "--timeout-secs",
                "240",
                "--backfill-bin",
                backfill.to_str().expect("a UTF-8 path"),
            ])
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start backfill-bench");
        // Read both pipes while waiting, and give up after five minutes.
        let mut out = child.stdout.take().expect("stdout");
        let mut err = child.stderr.take().expect("stderr");
        let out_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        let err_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        let deadline = Instant::now() + Duration::from_secs(300);
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait for backfill-bench") {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("backfill-bench did not finish within 5 minutes");
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let stdout = out_reader.join().unwrap_or_default();
        let stderr = err_reader.join().unwrap_or_default();
        eprintln!("--- stdout\n{stdout}\n--- stderr\n{stderr}");
        if stderr.contains("PostgreSQL is not reachable") {
            panic!("{PG_HINT}\n{stderr}");
        }
        if stderr.contains("RabbitMQ is not reachable") {
            panic!("{MQ_HINT}\n{stderr}");
        }
        assert!(
            status.success(),
            "backfill-bench exited with {status}:\n{stderr}"
        );
        let verdict = stdout
            .lines()
            .find(|l| l.starts_with("checksums: "))
            .unwrap_or_else(|| panic!("no `checksums:` line in the output:\n{stdout}"));
        assert!(
            verdict.starts_with("checksums: match"),
            "the contenders disagree: {verdict}"
        );
        for contender in [
            "limit (1 UPDATE)",
            "per-row",
            "backfill commit, 1 mapper",
            "backfill commit, 2 mappers",
            "backfill dry-run, 2 mappers",
            "backfill commit, read-rewrite-write, 1 mapper",
            "backfill commit, read-rewrite-write, 2 mappers",
            "backfill dry-run, read-rewrite-write, 2 mappers",
        ] {
            assert!(
                stdout.contains(&format!("| {contender} |")),
                "no table row for {contender}:\n{stdout}"
            );
        }
        assert!(
            stdout.contains("messaging per shard:"),
            "no messaging measurement:\n{stdout}"
        );
        assert!(stdout.contains("breakdown"), "no breakdown:\n{stdout}");
        assert!(
            stdout.contains("fold per shard, slowest over fastest median"),
            "no fold measurement:\n{stdout}"
        );
        assert!(
            stdout.contains("monitoring a run of 200 shards and 500 groups"),
            "no monitor measurement:\n{stdout}"
        );
        // A mapper's memory follows the batch, not the shard: batched, the
        // shard of large rows costs a fraction of what it costs as one batch.
        let memory = stdout
            .lines()
            .find(|l| l.starts_with("mapper memory: "))
            .unwrap_or_else(|| panic!("no `mapper memory:` line in the output:\n{stdout}"));
        let figure = |label: &str| -> f64 {
            memory
                .split(&format!("{label} "))
                .nth(1)
                .and_then(|rest| rest.split(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no `{label}` figure in {memory}"))
        };
        let (batched, whole) = (figure("batched"), figure("whole shard"));
        assert!(
            batched * 2.0 < whole,
            "batching bounds the mapper's memory: {memory}"
        );
    }
}
