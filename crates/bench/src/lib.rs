//! `backfill-bench`: backfill side by side with the database's own limit and
//! a per-row script, on one generated database, in one run (BENCHMARKS.md).
//!
//! One run generates the certificate-titles data set once into a template
//! database, then, for every contender, clones the template
//! (`CREATE DATABASE … TEMPLATE …`), runs the contender against the clone,
//! measures it and drops the clone. Contenders:
//!
//! - `limit`: one set-based `UPDATE … jsonb_set(…)` in one transaction, over
//!   the rows the job's own group and target queries select;
//! - `per-row`: a read-modify-write loop, one `SELECT` and one `UPDATE` per
//!   row over one connection (autocommit), over the same rows;
//! - `commit`: `backfill coordinator --commit --wait` with a `backfill
//!   reducer` and 1, 2, 4… `backfill mapper` processes over RabbitMQ;
//! - `dry-run`: the same without `--commit`;
//! - `read-rewrite`: `commit` and `dry-run` again with every row read and
//!   rewritten by the mappers (`BACKFILL_PUSHDOWN=off`), the path of the
//!   rules the database cannot apply itself (see `backfill_job::pushdown`);
//! - `streamfield` (only when named in `--only`): a StreamField migration by
//!   backfill (`jobs/wagtail-streamfield.toml`) against Wagtail's own
//!   `MigrateStreamData` (`tools/wagtail-bench`), see [`streamfield`].
//!
//! Per contender it reports wall time, rows per second, the ratio to the
//! limit, the peak RSS of every backfill process, the database's growth and
//! a checksum of the target column; the commit contenders must agree on the
//! checksum and the dry run must leave it as generated, or the program exits
//! with 1. It also measures the per-shard messaging overhead (a round trip
//! publish, deliver, result, ack on the product's queues) and, from the
//! ledger, where each shard's time went.
//!
//! # Layout
//!
//! - [`db`]: the admin connection, template, clones, sizes, checksums.
//! - [`sqlside`]: the row set derived from the job's SQL, and the `limit` and
//!   `per-row` contenders.
//! - [`procs`]: backfill processes, their peak RSS (`VmHWM`), their stop.
//! - [`ledger`]: per-shard timings read back from the ledger of a run.
//! - [`breakdown`]: the mapper's steps timed in process (fetch, parse, rules,
//!   serialise, commit) on a sample of shards.
//! - [`messaging`]: the messaging round trip per shard.
//! - [`memory`]: a mapper's peak RSS on a shard of large rows, against the
//!   bound 64 MiB + 3 × the largest row, batched and as one batch.
//! - [`fold`]: the reducer's fold per shard against the number of groups.
//! - [`monitor`]: `status` and the dashboard's run APIs on a run of 10,000
//!   shards and 50,000 groups.
//! - [`report`]: the table.
//! - [`streamfield`]: backfill against Wagtail's `MigrateStreamData`.

pub mod breakdown;
pub mod conn;
pub mod db;
pub mod fold;
pub mod ledger;
pub mod memory;
pub mod messaging;
pub mod monitor;
pub mod procs;
pub mod report;
pub mod sqlside;
pub mod streamfield;

use anyhow::{bail, Context};
use backfill_job::JobSpec;
use clap::Parser;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The job every contender performs, built in so the bench runs from anywhere.
pub const CERTIFICATE_JOB: &str = include_str!("../../../jobs/program-certificate-titles.toml");

/// Default admin connection (its database is only used to create and drop others).
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// Default broker.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Benchmark backfill against a set-based UPDATE (the limit) and a per-row
/// script, on the same generated PostgreSQL database. See BENCHMARKS.md.
#[derive(Debug, Parser, Clone)]
#[command(name = "backfill-bench", version, about)]
pub struct Options {
    /// Revisions to generate (certificate-page revisions, spread over --programs).
    #[arg(long, default_value_t = 1_000_000)]
    pub rows: u64,
    /// Programs to generate.
    #[arg(long, default_value_t = 100)]
    pub programs: u32,
    /// Seed of the generator.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Admin connection: the server on which the bench_* databases are created.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, hide_env_values = true)]
    pub database_url: String,
    /// RabbitMQ.
    #[arg(long, env = "AMQP_URL", default_value = DEFAULT_AMQP_URL, hide_env_values = true)]
    pub amqp_url: String,
    /// The `backfill` binary [default: `backfill` next to this program].
    #[arg(long, value_name = "PATH")]
    pub backfill_bin: Option<PathBuf>,
    /// Mapper process counts of the commit contenders.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    pub mappers: Vec<u16>,
    /// Mapper processes of the dry-run contender.
    #[arg(long, default_value_t = 2)]
    pub dry_run_mappers: u16,
    /// `--concurrency` of each mapper process (1: N mappers = N shards in flight).
    #[arg(long, default_value_t = 1)]
    pub concurrency: u16,
    /// Rows per shard [default: the job spec's shard_size].
    #[arg(long)]
    pub shard_size: Option<u32>,
    /// Contenders to run, of: limit, per-row, commit, dry-run, read-rewrite, messaging, breakdown,
    /// memory, fold, monitor, streamfield [default: all but streamfield]. `commit` runs once per
    /// --mappers value; `streamfield` runs only when named.
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub only: Vec<String>,
    /// Keep the template and every contender's database (else they are dropped).
    #[arg(long)]
    pub keep: bool,
    /// Use this existing database as the template instead of generating one
    /// (it is never dropped).
    #[arg(long, value_name = "DB")]
    pub template: Option<String>,
    /// Most seconds one contender may take before it is stopped and the bench fails.
    #[arg(long, default_value_t = 7200)]
    pub timeout_secs: u64,
    /// Round trips of the messaging measurement.
    #[arg(long, default_value_t = 300)]
    pub messaging_shards: u32,
    /// Shards sampled by the in-process breakdown.
    #[arg(long, default_value_t = 20)]
    pub breakdown_shards: u32,
    /// Numbers of groups in a run of the fold measurement.
    #[arg(long, value_delimiter = ',', default_value = "100,5000,100000")]
    pub fold_groups: Vec<u32>,
    /// Shards folded per number of groups by the fold measurement.
    #[arg(long, default_value_t = 40)]
    pub fold_shards: u32,
    /// Groups each shard's result carries in the fold measurement.
    #[arg(long, default_value_t = 10)]
    pub fold_groups_per_shard: u32,
    /// Shards of the run the monitor measurement builds.
    #[arg(long, default_value_t = 10_000)]
    pub monitor_shards: u32,
    /// Groups of the run the monitor measurement builds.
    #[arg(long, default_value_t = 50_000)]
    pub monitor_groups: u32,
    /// Rows of the mapper memory measurement (one shard).
    #[arg(long, default_value_t = 10)]
    pub memory_rows: u32,
    /// MiB per row of the mapper memory measurement.
    #[arg(long, default_value_t = 20)]
    pub memory_row_mib: u32,
    /// Mapper processes of the streamfield contender's backfill side.
    #[arg(long, default_value_t = 2)]
    pub streamfield_mappers: u16,
    /// The script that runs Wagtail's MigrateStreamData [default:
    /// tools/wagtail-bench/run.sh of the source tree this bench was built from].
    #[arg(long, value_name = "PATH")]
    pub wagtail_bench: Option<PathBuf>,
    /// The virtualenv of the Wagtail side (made and filled from PyPI when it
    /// lacks Wagtail) [default: the script's, under the system temp dir].
    #[arg(long, value_name = "DIR")]
    pub wagtail_venv: Option<PathBuf>,
    /// Fail, instead of skipping the streamfield contender, when the Wagtail
    /// side cannot be set up (no Python, no venv, no PyPI).
    #[arg(long)]
    pub require_wagtail: bool,
    /// Where the processes' logs go [default: a new directory under the system temp dir].
    #[arg(long, value_name = "DIR")]
    pub log_dir: Option<PathBuf>,
}

/// One contender of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contender {
    Limit,
    PerRow,
    Commit(u16),
    DryRun(u16),
    /// The same as `Commit`, with every row read and rewritten by the
    /// mappers (`BACKFILL_PUSHDOWN=off`).
    CommitRw(u16),
    /// The same as `DryRun`, with every row read by the mappers.
    DryRunRw(u16),
}

impl Contender {
    /// The name in the table.
    pub fn label(self) -> String {
        match self {
            Contender::Limit => "limit (1 UPDATE)".into(),
            Contender::PerRow => "per-row".into(),
            Contender::Commit(n) => format!("backfill commit, {n} mapper{}", plural(n)),
            Contender::DryRun(n) => format!("backfill dry-run, {n} mapper{}", plural(n)),
            Contender::CommitRw(n) => format!(
                "backfill commit, read-rewrite-write, {n} mapper{}",
                plural(n)
            ),
            Contender::DryRunRw(n) => format!(
                "backfill dry-run, read-rewrite-write, {n} mapper{}",
                plural(n)
            ),
        }
    }

    /// A short name for database names and queue prefixes.
    pub fn slug(self) -> String {
        match self {
            Contender::Limit => "limit".into(),
            Contender::PerRow => "perrow".into(),
            Contender::Commit(n) => format!("commit{n}"),
            Contender::DryRun(n) => format!("dryrun{n}"),
            Contender::CommitRw(n) => format!("commitrw{n}"),
            Contender::DryRunRw(n) => format!("dryrunrw{n}"),
        }
    }

    pub fn is_backfill(self) -> bool {
        self.mappers().is_some()
    }

    /// A backfill run's mapper processes.
    pub fn mappers(self) -> Option<u16> {
        match self {
            Contender::Commit(n)
            | Contender::DryRun(n)
            | Contender::CommitRw(n)
            | Contender::DryRunRw(n) => Some(n),
            Contender::Limit | Contender::PerRow => None,
        }
    }

    /// A backfill dry run, on either path.
    pub fn is_dry_run(self) -> bool {
        matches!(self, Contender::DryRun(_) | Contender::DryRunRw(_))
    }

    /// Every row read and rewritten by the mappers.
    pub fn read_rewrite(self) -> bool {
        matches!(self, Contender::CommitRw(_) | Contender::DryRunRw(_))
    }
}

fn plural(n: u16) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

const KNOWN: &[&str] = &[
    "limit",
    "per-row",
    "commit",
    "dry-run",
    "read-rewrite",
    "messaging",
    "breakdown",
    "memory",
    "fold",
    "monitor",
    "streamfield",
];

impl Options {
    fn wants(&self, what: &str) -> bool {
        self.only.is_empty() || self.named(what)
    }

    /// Named in `--only` (for what does not run by default).
    fn named(&self, what: &str) -> bool {
        self.only.iter().any(|o| o == what)
    }

    /// The contenders in the order they run.
    pub fn contenders(&self) -> Vec<Contender> {
        let mut v = Vec::new();
        if self.wants("limit") {
            v.push(Contender::Limit);
        }
        if self.wants("per-row") {
            v.push(Contender::PerRow);
        }
        if self.wants("commit") {
            v.extend(self.mappers.iter().map(|&n| Contender::Commit(n)));
        }
        if self.wants("dry-run") {
            v.push(Contender::DryRun(self.dry_run_mappers));
        }
        // The read-rewrite-write path side by side with `commit` and
        // `dry-run`, unless `--only` leaves it out.
        if self.wants("read-rewrite") {
            if self.wants("commit") {
                v.extend(self.mappers.iter().map(|&n| Contender::CommitRw(n)));
            }
            if self.wants("dry-run") {
                v.push(Contender::DryRunRw(self.dry_run_mappers));
            }
        }
        v
    }

    fn validate(&self) -> anyhow::Result<()> {
        for o in &self.only {
            if !KNOWN.contains(&o.as_str()) {
                bail!(
                    "--only: unknown contender `{o}` (one of {})",
                    KNOWN.join(", ")
                );
            }
        }
        if self.rows == 0 {
            bail!("--rows must be at least 1");
        }
        if self.programs == 0 {
            bail!("--programs must be at least 1");
        }
        if self.fold_groups.contains(&0) || self.fold_shards == 0 || self.fold_groups_per_shard == 0
        {
            bail!("--fold-groups, --fold-shards and --fold-groups-per-shard must be at least 1");
        }
        if self.monitor_shards == 0 || self.monitor_groups == 0 {
            bail!("--monitor-shards and --monitor-groups must be at least 1");
        }
        if self.mappers.contains(&0)
            || self.dry_run_mappers == 0
            || self.concurrency == 0
            || self.streamfield_mappers == 0
        {
            bail!("--mappers, --dry-run-mappers, --streamfield-mappers and --concurrency must be at least 1");
        }
        if let Some(t) = &self.template {
            if !backfill_job::spec::is_identifier(t) || t.contains('.') {
                bail!("--template `{t}` is not a plain database name");
            }
        }
        Ok(())
    }

    /// The `backfill` binary to run.
    pub fn backfill_bin(&self) -> anyhow::Result<PathBuf> {
        if let Some(p) = &self.backfill_bin {
            return Ok(p.clone());
        }
        let me = std::env::current_exe().context("cannot find this program's own path")?;
        let dir = me
            .parent()
            .context("this program's path has no directory")?;
        Ok(dir.join(format!("backfill{}", std::env::consts::EXE_SUFFIX)))
    }
}

/// What a contender did.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub contender: Contender,
    pub wall: Duration,
    /// Distinct target rows the contender went through.
    pub rows: u64,
    /// Rows written (dry run: rows that would be written).
    pub changed: u64,
    /// `pg_database_size` after − before.
    pub growth_bytes: i64,
    /// `backfill_before_image` (table, TOAST and indexes), when present.
    pub before_image_bytes: Option<i64>,
    /// All `backfill_*` ledger tables, before-images included, when present.
    pub ledger_bytes: Option<i64>,
    pub checksum: String,
    /// Peak RSS (KiB) per process, in start order: (role, KiB).
    pub rss: Vec<(String, u64)>,
    /// Extra lines (ledger timings, summary).
    pub notes: Vec<String>,
    /// A backfill run's (map time: first claim to last shard committed,
    /// reduce lag: last shard committed to last fold), s.
    pub phases: Option<(f64, f64)>,
}

/// Parses the command line, runs, and returns the exit code.
pub fn main() -> i32 {
    let opts = match Options::try_parse() {
        Ok(o) => o,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    if let Err(e) = opts.validate() {
        eprintln!("error: {e}");
        return 2;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return 1;
        }
    };
    match rt.block_on(run(opts)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

/// The whole benchmark; returns 0 when every checksum agrees, 1 otherwise.
pub async fn run(opts: Options) -> anyhow::Result<i32> {
    let spec = JobSpec::parse(CERTIFICATE_JOB).map_err(|e| anyhow::anyhow!("built-in job: {e}"))?;
    let contenders = opts.contenders();
    let needs_broker = contenders.iter().any(|c| c.is_backfill())
        || opts.wants("messaging")
        || opts.wants("memory")
        || opts.named("streamfield");
    let server = db::Server::connect(&opts.database_url).await?;
    if needs_broker {
        messaging::check_broker(&opts.amqp_url).await?;
    }
    let bin = opts.backfill_bin()?;
    if (contenders.iter().any(|c| c.is_backfill())
        || opts.wants("memory")
        || opts.named("streamfield"))
        && !bin.is_file()
    {
        bail!(
            "the backfill binary {} does not exist: build it (`cargo build --release --bin backfill`) or pass --backfill-bin",
            bin.display()
        );
    }
    let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let log_dir = match &opts.log_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("backfill-bench-{tag}")),
    };
    std::fs::create_dir_all(&log_dir)
        .with_context(|| format!("cannot create the log directory {}", log_dir.display()))?;
    let job_path = log_dir.join("program-certificate-titles.toml");
    std::fs::write(&job_path, CERTIFICATE_JOB)
        .with_context(|| format!("cannot write {}", job_path.display()))?;

    println!(
        "== backfill-bench: {} revisions, {} programs, seed {}",
        opts.rows, opts.programs, opts.seed
    );
    println!(
        "   server {}, broker {}",
        backfill_store::redact_url(&opts.database_url),
        backfill_store::redact_url(&opts.amqp_url)
    );
    println!(
        "   backfill binary {}, logs in {}",
        bin.display(),
        log_dir.display()
    );
    println!("   machine: {} CPUs, {}", num_cpus(), mem_total());

    let mut cleanup = db::Cleanup::new(server.clone(), opts.keep);
    let result = run_contenders(
        &opts,
        &spec,
        &server,
        &bin,
        &tag,
        &job_path,
        &log_dir,
        &contenders,
        &mut cleanup,
    )
    .await;
    cleanup.finish().await;
    result
}

#[allow(clippy::too_many_arguments)]
async fn run_contenders(
    opts: &Options,
    spec: &JobSpec,
    server: &db::Server,
    bin: &std::path::Path,
    tag: &str,
    job_path: &std::path::Path,
    log_dir: &std::path::Path,
    contenders: &[Contender],
    cleanup: &mut db::Cleanup,
) -> anyhow::Result<i32> {
    // The template: generated once, or given.
    let template = match &opts.template {
        Some(t) => {
            println!("== template: using the existing database `{t}`");
            t.clone()
        }
        None => {
            let name = format!("bench_{tag}_template");
            cleanup.add(&name);
            let t0 = Instant::now();
            let stats = server.generate_template(&name, opts).await?;
            println!(
                "== template `{name}` generated in {:.1} s: {stats:?}",
                t0.elapsed().as_secs_f64()
            );
            name
        }
    };
    let baseline = server.inspect_template(&template, spec).await?;
    println!("{}", baseline.describe());

    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut sample_result: Option<String> = None;
    for &c in contenders {
        let name = format!("bench_{tag}_{}", c.slug());
        println!("\n== {}: database `{name}` from the template", c.label());
        cleanup.add(&name);
        server.clone_template(&template, &name).await?;
        let url = server.url_for(&name)?;
        let before = server.db_size(&name).await?;
        let load_before = loadavg();
        let timeout = Duration::from_secs(opts.timeout_secs);
        let mut outcome = match c {
            Contender::Limit | Contender::PerRow => {
                sqlside::run_contender(c, &url, spec, baseline.target_rows, timeout).await?
            }
            Contender::Commit(_)
            | Contender::DryRun(_)
            | Contender::CommitRw(_)
            | Contender::DryRunRw(_) => {
                let n = c.mappers().unwrap_or(1);
                let read_rewrite: &[(&str, &str)] = &[("BACKFILL_PUSHDOWN", "off")];
                let prefix = format!("bench-{tag}-{}", c.slug());
                let run = procs::BackfillRun {
                    bin,
                    job_path,
                    db_url: &url,
                    amqp_url: &opts.amqp_url,
                    queue_prefix: &prefix,
                    mappers: n,
                    concurrency: opts.concurrency,
                    commit: !c.is_dry_run(),
                    shard_size: opts.shard_size,
                    log_dir,
                    timeout,
                    extra_env: if c.read_rewrite() { read_rewrite } else { &[] },
                    params: &[],
                };
                let r = run.run(server).await;
                messaging::delete_queues(&opts.amqp_url, &prefix).await;
                let r = r?;
                let analysis =
                    ledger::analyse(&url, &r.run_id, r.spawned_ms, r.exited_ms, opts.concurrency)
                        .await?;
                if sample_result.is_none() {
                    sample_result = analysis.sample_result.clone();
                }
                let mut o = Outcome {
                    contender: c,
                    wall: r.wall,
                    rows: r.processed,
                    changed: r.changed,
                    growth_bytes: 0,
                    before_image_bytes: None,
                    ledger_bytes: None,
                    checksum: String::new(),
                    rss: r.rss,
                    notes: vec![r.summary],
                    phases: (analysis.shards > 0)
                        .then_some((analysis.mapping, analysis.reduce_tail)),
                };
                o.notes.extend(analysis.lines());
                o
            }
        };
        outcome.notes.push(format!(
            "load average (1, 5, 15 min) before: {load_before}; after: {} — other work on the machine skews the times",
            loadavg()
        ));
        let after = server.db_size(&name).await?;
        outcome.growth_bytes = after - before;
        let (bi, lg) = db::ledger_sizes(&url).await?;
        outcome.before_image_bytes = bi;
        outcome.ledger_bytes = lg;
        outcome.checksum = db::checksum(&url).await?.1;
        println!("{}", report::one_line(&outcome, &baseline));
        for n in &outcome.notes {
            println!("   {n}");
        }
        if matches!(c, Contender::DryRun(_)) && opts.wants("breakdown") {
            match breakdown::run(&url, spec, opts.shard_size, opts.breakdown_shards).await {
                Ok(b) => {
                    for l in b.lines() {
                        println!("   {l}");
                    }
                    outcome.notes.extend(b.lines());
                }
                Err(e) => println!("   breakdown failed: {e:#}"),
            }
        }
        outcomes.push(outcome);
        if !opts.keep {
            server.drop_db(&name).await?;
            cleanup.forget(&name);
        }
    }

    let messaging = if opts.wants("messaging") {
        println!("\n== messaging: {} shard round trips (publish task + confirm, deliver, publish result + confirm, ack, deliver result, ack)", opts.messaging_shards);
        let prefix = format!("bench-{tag}-messaging");
        let m = messaging::measure(
            &opts.amqp_url,
            &prefix,
            opts.messaging_shards,
            sample_result.as_deref(),
        )
        .await;
        messaging::delete_queues(&opts.amqp_url, &prefix).await;
        let m = m?;
        println!("   {}", m.describe());
        Some(m)
    } else {
        None
    };

    let memory = if opts.wants("memory") {
        println!(
            "\n== memory: {} rows of {} MiB in one shard, 1 mapper process (peak RSS = VmHWM)",
            opts.memory_rows, opts.memory_row_mib
        );
        let m = memory::measure(
            server,
            bin,
            &opts.amqp_url,
            log_dir,
            tag,
            opts.memory_rows,
            opts.memory_row_mib,
            Duration::from_secs(opts.timeout_secs),
        )
        .await?;
        for l in m.lines() {
            println!("   {l}");
        }
        Some(m)
    } else {
        None
    };

    let fold = if opts.wants("fold") {
        println!(
            "\n== fold: the reducer's fold per shard, {} shards of {} groups each, by groups in the run",
            opts.fold_shards, opts.fold_groups_per_shard
        );
        Some(
            fold::measure(
                server,
                tag,
                &opts.fold_groups,
                opts.fold_shards,
                opts.fold_groups_per_shard,
            )
            .await?,
        )
    } else {
        None
    };

    let monitor = if opts.wants("monitor") {
        println!(
            "\n== monitor: status and the dashboard's run APIs on a run of {} shards and {} groups, its ledger built directly",
            opts.monitor_shards, opts.monitor_groups
        );
        let m = monitor::measure(
            server,
            bin,
            log_dir,
            tag,
            opts.monitor_shards,
            opts.monitor_groups,
        )
        .await?;
        println!("   {}", m.line());
        Some(m)
    } else {
        None
    };

    let streamfield = if opts.named("streamfield") {
        println!("\n== streamfield: backfill against Wagtail's MigrateStreamData, each on a clone of the template");
        Some(streamfield::run(opts, server, &template, tag, bin, log_dir, cleanup).await?)
    } else {
        None
    };

    println!();
    let mut verdict = report::verdict(&outcomes, &baseline);
    if !outcomes.is_empty() {
        print!("{}", report::table(&outcomes, &baseline, opts));
    }
    if let Some(m) = &messaging {
        println!("messaging per shard: {}", m.describe());
    }
    if let Some(m) = &memory {
        println!("{}", m.summary());
    }
    if let Some(m) = &monitor {
        println!("{}", m.line());
    }
    if let Some(rows) = &fold {
        for r in rows {
            println!("fold: {}", r.line());
        }
        if let Some(ratio) = fold::flatness(rows) {
            println!(
                "fold per shard, slowest over fastest median across {:?} groups: {ratio:.2} × (target ≤ 2 ×)",
                opts.fold_groups
            );
        }
    }
    if !outcomes.is_empty() || !opts.named("streamfield") {
        println!("{}", verdict.line);
    }
    match &streamfield {
        Some(streamfield::Comparison::Ran(r)) => {
            let (ok, line) = r.verdict();
            println!();
            print!("{}", r.table());
            println!("{line}");
            verdict.ok &= ok;
        }
        Some(streamfield::Comparison::Skipped(reason)) => {
            println!("streamfield: skipped, the Wagtail side cannot run: {reason}");
        }
        None => {}
    }
    Ok(if verdict.ok { 0 } else { 1 })
}

/// `/proc/loadavg`'s three averages.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

fn num_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn mem_total() -> String {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| format!("{:.1} GiB RAM", kb as f64 / 1024.0 / 1024.0))
        .unwrap_or_else(|| "RAM unknown".into())
}
