//! Worker fleets for fault tests: mapper and reducer processes started from
//! the built binary, killed and restarted at will, and the fault-free
//! reference a faulty run must match.

#![allow(dead_code, clippy::unwrap_used)]

use super::*;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

pub const COLLECTIONS: u64 = 4_000;
pub const VERSIONS: u32 = 10;

pub struct Fleet<'a> {
    env: &'a TestEnv,
    logs: PathBuf,
    pub mappers: Vec<Child>,
    reducer: Option<Child>,
    spawned: usize,
}

impl<'a> Fleet<'a> {
    pub fn new(env: &'a TestEnv) -> Fleet<'a> {
        let logs = std::env::temp_dir().join(format!("bf-fleet-{}", env.prefix));
        std::fs::create_dir_all(&logs).unwrap();
        Fleet {
            env,
            logs,
            mappers: Vec::new(),
            reducer: None,
            spawned: 0,
        }
    }

    /// A fleet of `mappers` mappers and a reducer, started.
    pub fn started(env: &'a TestEnv, mappers: usize) -> Fleet<'a> {
        let mut fleet = Fleet::new(env);
        fleet.start(mappers);
        fleet
    }

    pub fn spawn(&mut self, args: &[&str]) -> Child {
        self.spawned += 1;
        let log =
            std::fs::File::create(self.logs.join(format!("{}-{}.log", args[0], self.spawned)))
                .unwrap();
        self.env
            .cmd(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    pub fn start(&mut self, mappers: usize) {
        for _ in 0..mappers {
            let m = self.spawn(&["mapper", "--concurrency", "2"]);
            self.mappers.push(m);
        }
        self.reducer = Some(self.spawn(&["reducer"]));
    }

    pub fn kill_mapper(&mut self, i: usize) {
        let mut m = self.mappers.remove(i);
        m.kill().unwrap(); // SIGKILL
        m.wait().unwrap();
        let fresh = self.spawn(&["mapper", "--concurrency", "2"]);
        self.mappers.push(fresh);
    }

    /// Stops the reducer (SIGKILL) without starting another: results wait
    /// in their queue, unfolded.
    pub fn stop_reducer(&mut self) {
        if let Some(mut r) = self.reducer.take() {
            let _ = r.kill();
            let _ = r.wait();
        }
    }

    pub fn kill_reducer(&mut self) {
        if let Some(mut r) = self.reducer.take() {
            r.kill().unwrap();
            r.wait().unwrap();
        }
        self.reducer = Some(self.spawn(&["reducer"]));
    }
}

impl Drop for Fleet<'_> {
    fn drop(&mut self) {
        for c in self.mappers.iter_mut().chain(self.reducer.iter_mut()) {
            let _ = c.kill();
            let _ = c.wait();
        }
        // BACKFILL_KEEP_WORKER_LOGS=1 keeps them after a pass too, to read
        // what the workers did.
        if !std::thread::panicking() && std::env::var_os("BACKFILL_KEEP_WORKER_LOGS").is_none() {
            let _ = std::fs::remove_dir_all(&self.logs);
        } else {
            eprintln!("worker logs kept in {}", self.logs.display());
        }
    }
}

/// The summary without the run id.
pub fn comparable(s: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    s.iter()
        .filter(|(k, _)| k.as_str() != "run")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The same job on an identical database, without faults (embedded, one process).
pub async fn reference(
    job_name: &str,
    shard_size: &str,
) -> (BTreeMap<String, String>, String, String) {
    let env = TestEnv::with_collections(COLLECTIONS, VERSIONS).await;
    let out = env.run(&[
        "run",
        "--local",
        "--job",
        &job(job_name),
        "--all",
        "--commit",
        "--shard-size",
        shard_size,
    ]);
    assert_eq!(out.status.code(), Some(0));
    (
        comparable(&summary(&out)),
        env.table_md5("collection_models", "id").await,
        env.table_md5("collection_snapshot_contents", "id").await,
    )
}

pub async fn assert_matches_reference(
    env: &TestEnv,
    out_summary: &BTreeMap<String, String>,
    reference: &(BTreeMap<String, String>, String, String),
) {
    assert_eq!(
        comparable(out_summary),
        reference.0,
        "the summary equals the fault-free summary"
    );
    assert_eq!(
        env.table_md5("collection_models", "id").await,
        reference.1,
        "current rows equal the fault-free run's"
    );
    assert_eq!(
        env.table_md5("collection_snapshot_contents", "id").await,
        reference.2,
        "every version equals the fault-free run's"
    );
    let changed = num(out_summary, "changed");
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM backfill_before_image")
            .await,
        changed,
        "each row written exactly once"
    );
    let shards = num(out_summary, "shards");
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM backfill_shard WHERE state = 'done' AND deliveries = 1 AND reduced_at IS NOT NULL").await,
        shards,
        "each shard committed once and folded once"
    );
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM backfill_run").await,
        1,
        "one plan"
    );
}

pub fn wait_child(c: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = c.try_wait().unwrap() {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "process did not finish within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The coordinator's output once it exits; killed, and the test failed,
/// after five minutes.
pub fn coordinator_output(c: Child) -> std::process::Output {
    let out = super::child_output_within(c, Duration::from_secs(300));
    eprintln!(
        "coordinator: exit {:?}\n{}\n{}",
        out.status.code(),
        stdout(&out),
        stderr(&out)
    );
    out
}

/// `coordinator --job SPEC --all --commit --wait --shard-size N`.
pub fn coordinator_args<'a>(spec: &'a str, shard_size: &'a str) -> [&'a str; 8] {
    [
        "coordinator",
        "--job",
        spec,
        "--all",
        "--commit",
        "--wait",
        "--shard-size",
        shard_size,
    ]
}

/// Starts `backfill coordinator --job SPEC --all --commit --wait --shard-size N`
/// with its output captured (read it with [`coordinator_output`]).
pub fn spawn_coordinator(env: &TestEnv, spec: &str, shard_size: &str) -> Child {
    env.cmd(&coordinator_args(spec, shard_size))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}
