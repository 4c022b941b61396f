//! `backfill verify`: a dry run of a job whose success is "nothing left to
//! change, no conflicts, no errors" (and, for a versioned job, as many rows
//! as when it was last committed); the verdict is recorded in the ledger.

use backfill_store::{RunRecord, Store};
use std::path::PathBuf;

use crate::cli::args::{JobOptions, SteerArgs};
use crate::cli::parse::job_request;
use crate::exit::{usage, Exit};
use crate::in_process::{run_in_process, Work};
use crate::settings::Settings;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The job spec file (TOML).
    #[arg(long)]
    pub job: PathBuf,
    /// A group to verify (repeatable).
    #[arg(long = "group", value_name = "KEY")]
    pub groups: Vec<String>,
    /// Verify every group.
    #[arg(long)]
    pub all: bool,
    /// A value for one of the job's parameters, as NAME=VALUE (repeatable):
    /// the values the commit used.
    #[arg(long = "param", value_name = "NAME=VALUE", value_parser = crate::cli::args::parse_param)]
    pub params: Vec<(String, String)>,
    /// Rows per shard (default: the spec's shard_size).
    #[arg(long)]
    pub shard_size: Option<u32>,
    /// Mapper tasks to start in this process.
    #[arg(long, default_value_t = 2)]
    pub mappers: u16,
    /// Embedded mode: the in-process queue instead of RabbitMQ (implied by a sqlite:// URL).
    #[arg(long)]
    pub local: bool,
}

pub async fn run(a: Args, settings: &Settings) -> anyhow::Result<Exit> {
    if a.mappers == 0 {
        return Err(usage("--mappers must be at least 1"));
    }
    let opts = JobOptions {
        groups: a.groups,
        all: a.all,
        commit: false,
        shard_size: a.shard_size,
        skip_review: false,
        review_window: "24h".into(),
        sample: None,
        params: a.params,
        steer: SteerArgs::default(),
    };
    let req = job_request(&a.job, &opts, &settings.operator)?;
    let req = backfill_coordinator::RunRequest {
        kind: backfill_job::RunKind::Verify,
        ..req
    };
    let local = a.local || settings.is_sqlite();
    let Some(done) = run_in_process(settings, Work::Job(Box::new(req)), a.mappers, local).await?
    else {
        return Ok(Exit::Busy);
    };
    let (rec, store) = (&done.rec, &done.store);
    let versions = versions_unchanged(store, rec).await?;
    // Before the report, which ends with the `Summary:` line.
    if let Some(v) = &versions {
        println!("{}", v.line);
    }
    done.print_report().await?;
    let verdict = backfill_job::verify::Verdict::of(
        &rec.tally.counts,
        rec.state,
        versions.as_ref().map(|v| v.same),
    );
    store
        .record_event(
            &rec.run_id,
            "verify",
            &settings.operator,
            Some(&verdict.detail),
        )
        .await?;
    eprintln!("verify of job `{}` {}", rec.spec.name, verdict.detail);
    Ok(Exit::check(verdict.passed))
}

/// For a job whose tables hold versions (`versioned = true`): the row
/// counts of its target tables when this verify was planned against those
/// when the job's last commit was planned. `None` for other jobs, or when
/// the job was never committed.
async fn versions_unchanged(
    store: &Store,
    verify: &RunRecord,
) -> anyhow::Result<Option<backfill_job::verify::Versions>> {
    if !verify.spec.versioned {
        return Ok(None);
    }
    let Some(last) = store.last_commit_verified(&verify.spec.name).await? else {
        return Ok(None);
    };
    let Some(commit) = store.load_run(&last.commit_run).await? else {
        return Ok(None);
    };
    let planned = |r: &RunRecord| {
        r.table_rows
            .as_ref()
            .and_then(|t| t.get("planned"))
            .and_then(|p| {
                serde_json::from_value::<std::collections::BTreeMap<String, i64>>(p.clone()).ok()
            })
    };
    let (Some(before), Some(now)) = (planned(&commit), planned(verify)) else {
        return Ok(None);
    };
    Ok(Some(backfill_job::verify::Versions::compare(
        &before,
        &now,
        &commit.run_id,
    )))
}
