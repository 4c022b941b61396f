//! Running backfill the way users run it: real `backfill reducer`, `backfill
//! mapper` and `backfill coordinator --wait` processes over RabbitMQ, each
//! with its peak RSS.
//!
//! Peak RSS is the kernel's high-water mark (`VmHWM` in `/proc/PID/status`),
//! read every 100 ms while the process lives, keeping the last value read
//! (it only grows, so the last read before exit is the peak up to 100 ms
//! before the end); workers are read once more, idle, before they are told
//! to stop (SIGTERM: they finish the shard in hand and exit).
//!
//! The wall time of a run is from spawning the coordinator (workers already
//! started, connected and consuming) to its exit, `--wait` included: plan,
//! publish, every shard mapped and reduced, the report printed.

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

/// A child process and its peak RSS so far.
pub struct Proc {
    pub role: String,
    child: Child,
    pid: u32,
    peak_kib: Arc<AtomicU64>,
    log: PathBuf,
}

/// `VmHWM` of a live process, in KiB.
pub fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

impl Proc {
    /// Spawns `bin args` with `envs`, stderr to `log`, stdout piped when asked.
    pub fn spawn(
        role: &str,
        bin: &Path,
        args: &[String],
        envs: &[(&str, &str)],
        log: PathBuf,
        pipe_stdout: bool,
    ) -> anyhow::Result<Proc> {
        let err = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stderr(Stdio::from(err))
            .stdout(if pipe_stdout {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .kill_on_drop(true);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {} {}", bin.display(), args.join(" ")))?;
        let pid = child
            .id()
            .with_context(|| format!("{role} exited at once"))?;
        let peak_kib = Arc::new(AtomicU64::new(0));
        let peak = peak_kib.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                match vm_hwm_kib(pid) {
                    Some(kib) => {
                        peak.fetch_max(kib, Ordering::Relaxed);
                    }
                    None => break, // gone (or a zombie: its memory is released)
                }
            }
        });
        Ok(Proc {
            role: role.to_string(),
            child,
            pid,
            peak_kib,
            log,
        })
    }

    /// Peak RSS so far, reading it once more now.
    pub fn peak_kib(&self) -> u64 {
        if let Some(k) = vm_hwm_kib(self.pid) {
            self.peak_kib.fetch_max(k, Ordering::Relaxed);
        }
        self.peak_kib.load(Ordering::Relaxed)
    }

    /// Whether the process has exited (with its status).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM, then waits up to `grace` before SIGKILL. Returns the peak RSS.
    pub async fn stop(mut self, grace: Duration) -> (String, u64) {
        let peak = self.peak_kib();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            eprintln!(
                "warning: {} (pid {}) did not stop within {grace:?}; killing it (log: {})",
                self.role,
                self.pid,
                self.log.display()
            );
            let _ = self.child.kill().await;
        }
        (self.role, peak)
    }

    /// Waits for the process to exit on its own (killed after `timeout`);
    /// returns its status, its stdout and its peak RSS.
    pub async fn wait_output(
        mut self,
        timeout: Duration,
    ) -> anyhow::Result<(std::process::ExitStatus, String, u64)> {
        let mut out = self.child.stdout.take();
        let reader = tokio::spawn(async move {
            let mut s = String::new();
            if let Some(o) = out.as_mut() {
                let _ = o.read_to_string(&mut s).await;
            }
            s
        });
        let status = match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(s) => s.with_context(|| format!("wait for {}", self.role))?,
            Err(_) => {
                let _ = self.child.kill().await;
                bail!(
                    "{} did not finish within {timeout:?} (log: {})",
                    self.role,
                    self.log.display()
                );
            }
        };
        let stdout = reader.await.unwrap_or_default();
        Ok((status, stdout, self.peak_kib.load(Ordering::Relaxed)))
    }
}

/// One backfill run across processes.
pub struct BackfillRun<'a> {
    pub bin: &'a Path,
    pub job_path: &'a Path,
    pub db_url: &'a str,
    pub amqp_url: &'a str,
    pub queue_prefix: &'a str,
    pub mappers: u16,
    pub concurrency: u16,
    pub commit: bool,
    pub shard_size: Option<u32>,
    pub log_dir: &'a Path,
    pub timeout: Duration,
    /// More environment for every process (settings under test).
    pub extra_env: &'a [(&'a str, &'a str)],
    /// The job's parameters, `NAME=VALUE` each (given to the coordinator as
    /// `--param`).
    pub params: &'a [String],
}

/// What the run did.
pub struct BackfillResult {
    pub run_id: String,
    pub wall: Duration,
    pub processed: u64,
    pub changed: u64,
    pub summary: String,
    /// (role, peak RSS KiB): coordinator, reducer, mappers.
    pub rss: Vec<(String, u64)>,
    /// Server clock (ms since the epoch) when the coordinator was spawned and
    /// when it had exited.
    pub spawned_ms: f64,
    pub exited_ms: f64,
}

impl BackfillRun<'_> {
    fn slug(&self) -> &str {
        self.queue_prefix
    }

    pub async fn run(&self, server: &crate::db::Server) -> anyhow::Result<BackfillResult> {
        let mut envs = vec![
            ("DATABASE_URL", self.db_url),
            ("AMQP_URL", self.amqp_url),
            ("BACKFILL_QUEUE_PREFIX", self.queue_prefix),
            ("BACKFILL_OPERATOR", "backfill-bench"),
            // The benchmark commits without reviewing a dry run first (the
            // ledger records that the review was skipped).
            ("BACKFILL_SKIP_REVIEW", "1"),
        ];
        envs.extend_from_slice(self.extra_env);
        let log = |name: &str| self.log_dir.join(format!("{}-{name}.log", self.slug()));
        let reducer = Proc::spawn(
            "reducer",
            self.bin,
            &["reducer".to_string()],
            &envs,
            log("reducer"),
            false,
        )?;
        let mut workers = vec![reducer];
        for i in 0..self.mappers {
            workers.push(Proc::spawn(
                &format!("mapper{}", i + 1),
                self.bin,
                &[
                    "mapper".to_string(),
                    "--concurrency".to_string(),
                    self.concurrency.to_string(),
                ],
                &envs,
                log(&format!("mapper{}", i + 1)),
                false,
            )?);
        }
        let result = self.drive(server, &envs, &mut workers, &log).await;
        let mut rss = Vec::new();
        for w in workers {
            rss.push(w.stop(Duration::from_secs(60)).await);
        }
        let mut r = result?;
        r.rss.extend(rss);
        Ok(r)
    }

    async fn drive(
        &self,
        server: &crate::db::Server,
        envs: &[(&str, &str)],
        workers: &mut [Proc],
        log: &dyn Fn(&str) -> PathBuf,
    ) -> anyhow::Result<BackfillResult> {
        // Every worker connected and consuming before the clock starts.
        let queues = backfill_queue::QueueNames::with_prefix(self.queue_prefix);
        let ready_by = Instant::now() + Duration::from_secs(60);
        loop {
            for w in workers.iter_mut() {
                if let Some(s) = w.exited() {
                    bail!(
                        "{} exited before the run ({s}); see {}",
                        w.role,
                        w.log.display()
                    );
                }
            }
            let tasks = crate::messaging::consumers(self.amqp_url, &queues.tasks).await;
            let results = crate::messaging::consumers(self.amqp_url, &queues.results).await;
            if tasks >= u32::from(self.mappers) && results >= 1 {
                break;
            }
            if Instant::now() > ready_by {
                bail!(
                    "the workers did not start consuming within 60 s ({tasks} consumers on {}, {results} on {}); see the logs in {}",
                    queues.tasks,
                    queues.results,
                    self.log_dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        let mut args = vec![
            "coordinator".to_string(),
            "--job".to_string(),
            self.job_path.display().to_string(),
            "--all".to_string(),
            "--wait".to_string(),
        ];
        if self.commit {
            args.push("--commit".to_string());
        }
        for p in self.params {
            args.push("--param".to_string());
            args.push(p.clone());
        }
        if let Some(n) = self.shard_size {
            args.push("--shard-size".to_string());
            args.push(n.to_string());
        }
        let spawned_ms = server.clock_ms().await?;
        let t0 = Instant::now();
        let coordinator = Proc::spawn(
            "coordinator",
            self.bin,
            &args,
            envs,
            log("coordinator"),
            true,
        )?;
        let coordinator_log = log("coordinator");
        let (status, stdout, peak) = coordinator.wait_output(self.timeout).await?;
        let wall = t0.elapsed();
        let exited_ms = server.clock_ms().await?;
        std::fs::write(log("coordinator-stdout"), &stdout).ok();
        if !status.success() {
            bail!(
                "backfill coordinator exited with {status}; stdout:\n{}\nsee {}",
                tail(&stdout, 40),
                coordinator_log.display()
            );
        }
        let run_id = stdout
            .lines()
            .next()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .context("the coordinator printed no run id")?
            .to_string();
        let summary = stdout
            .lines()
            .find(|l| l.starts_with("Summary:"))
            .with_context(|| {
                format!(
                    "the coordinator printed no Summary: line; stdout:\n{}",
                    tail(&stdout, 40)
                )
            })?
            .to_string();
        let field = |k: &str| -> anyhow::Result<u64> {
            summary_count(&summary, k).with_context(|| format!("no {k}= in `{summary}`"))
        };
        for bad in ["conflicts", "errors"] {
            if field(bad)? != 0 {
                bail!("the run reported {bad}: {summary}");
            }
        }
        Ok(BackfillResult {
            run_id,
            wall,
            processed: field("processed")?,
            changed: field("changed")?,
            summary,
            rss: vec![("coordinator".to_string(), peak)],
            spawned_ms,
            exited_ms,
        })
    }
}

/// A count of the `Summary:` line by its key; keys that are not counts
/// (`mode=`, `run=`, `state=`) and keys added later are passed over.
fn summary_count(summary: &str, key: &str) -> Option<u64> {
    summary
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::summary_count;

    #[test]
    fn counts_are_read_from_a_summary_line_ending_with_state() {
        let line = "Summary: mode=commit shards=2 processed=636 changed=567 unchanged=69 skipped=0 conflicts=0 errors=0 groups_processed=20 groups_skipped=10 refs_affected=1418 refs_skipped=172 conflicts_retried=0 run=r1 state=done";
        assert_eq!(summary_count(line, "processed"), Some(636));
        assert_eq!(summary_count(line, "changed"), Some(567));
        assert_eq!(summary_count(line, "conflicts"), Some(0));
        assert_eq!(summary_count(line, "errors"), Some(0));
        assert_eq!(summary_count(line, "state"), None);
        assert_eq!(summary_count(line, "missing"), None);
    }
}
