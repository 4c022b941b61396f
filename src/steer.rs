//! `backfill pause | resume | cancel | throttle RUN`: steering a run from
//! any host. Each writes the run's control row in the ledger (with an audit
//! event naming the operator); mappers read it within a second and act on
//! it before they start their next shard.

use backfill_job::report::render_report;
use backfill_job::RunState;
use backfill_store::{ControlState, Store, StoreError, ThrottleChange};
use std::time::{Duration, Instant};

use crate::exit::{usage, Exit};

/// The run, or a usage error naming it.
async fn running_run(store: &Store, run_id: &str) -> anyhow::Result<backfill_store::RunRecord> {
    store
        .load_run(run_id)
        .await?
        .ok_or_else(|| usage(format!("run {run_id} is not in the ledger")))
}

fn unknown(e: StoreError) -> anyhow::Error {
    match e {
        StoreError::UnknownRun(id) => usage(format!("run {id} is not in the ledger")),
        other => other.into(),
    }
}

/// Writes `state` to the control row of a run that has not finished; a
/// finished run is a usage error saying `finished(its state)`.
async fn set_unfinished(
    store: &Store,
    run_id: &str,
    state: ControlState,
    operator: &str,
    finished: impl FnOnce(RunState) -> String,
) -> anyhow::Result<()> {
    let rec = running_run(store, run_id).await?;
    if rec.state.is_finished() {
        return Err(usage(finished(rec.state)));
    }
    store
        .set_control(run_id, state, operator)
        .await
        .map_err(unknown)?;
    Ok(())
}

pub async fn pause(store: &Store, run_id: &str, operator: &str) -> anyhow::Result<Exit> {
    set_unfinished(store, run_id, ControlState::Pause, operator, |state| {
        format!("run {run_id} has already finished ({state}); nothing to pause")
    })
    .await?;
    println!(
        "run {run_id} paused: mappers start no new shard of it (the shards in hand finish). `backfill resume {run_id}` carries on."
    );
    Ok(Exit::Clean)
}

pub async fn resume(store: &Store, run_id: &str, operator: &str) -> anyhow::Result<Exit> {
    set_unfinished(store, run_id, ControlState::Run, operator, |state| {
        format!("run {run_id} has finished ({state}); start a new run of the job instead")
    })
    .await?;
    println!("run {run_id} resumed");
    Ok(Exit::Clean)
}

pub async fn cancel(
    store: &Store,
    run_id: &str,
    operator: &str,
    wait: Duration,
) -> anyhow::Result<Exit> {
    set_unfinished(store, run_id, ControlState::Cancel, operator, |state| {
        format!("run {run_id} has already finished ({state}); nothing to cancel")
    })
    .await?;
    eprintln!("run {run_id}: cancelling; waiting for the shards in hand to finish");
    // Mappers see the cancel within a second; give the shards they hold
    // time to commit so the summary counts them.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let started = Instant::now();
    loop {
        let n = store.shards_running(run_id).await?;
        if n == 0 {
            break;
        }
        if started.elapsed() >= wait {
            eprintln!(
                "{n} shards still in hand after {} s; marking the run cancelled anyway (their results still count when they arrive)",
                wait.as_secs()
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Let the reducer fold the last results before the summary is written.
    let settle = Instant::now();
    loop {
        let rec = running_run(store, run_id).await?;
        let done = store
            .shards(run_id)
            .await?
            .iter()
            .filter(|s| (s.state == "done" || s.state == "dead") && !s.reduced)
            .count();
        if done == 0 || settle.elapsed() > Duration::from_secs(10) || rec.state.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if store.finish_cancelled(run_id).await? {
        backfill_notify::notify(store, run_id, backfill_notify::Event::Cancelled, None, None).await;
    }
    let rec = running_run(store, run_id).await?;
    print!("{}", render_report(&rec.view()));
    let shards = store.shards(run_id).await?;
    let count =
        |f: &dyn Fn(&backfill_store::ShardRecord) -> bool| shards.iter().filter(|s| f(s)).count();
    let done = count(&|s| s.state == "done");
    let dead = count(&|s| s.state == "dead");
    let in_hand = count(&|s| s.state == "running");
    let never = count(&|s| s.state == "pending");
    eprintln!(
        "run {run_id} is {}: of {} shards, {done} were done and {} counted in the report; {dead} dead-lettered; {in_hand} still in hand (they count if they finish); {never} never started. Start a new run of the job to process the rest: it skips nothing the cancelled run wrote, and rows already changed come out unchanged.",
        rec.state, rec.shards_total, rec.shards_reduced
    );
    Ok(Exit::Clean)
}

pub async fn throttle(
    store: &Store,
    run_id: &str,
    change: &ThrottleChange,
    operator: &str,
) -> anyhow::Result<Exit> {
    let rec = running_run(store, run_id).await?;
    store
        .set_throttle(run_id, change, operator)
        .await
        .map_err(unknown)?;
    let c = store.control(run_id, &rec.spec.throttle).await?;
    let show = |v: Option<String>| v.unwrap_or_else(|| "off".into());
    println!(
        "run {run_id}: rows/s={} in-flight={} priority={} bytes/s={} wal-bytes/s={}",
        show(c.rows_per_sec.map(|r| r.to_string())),
        show(c.max_in_flight.map(|m| m.to_string())),
        c.priority,
        show(c.bytes_per_sec.map(|r| r.to_string())),
        show(c.max_wal_bytes_per_sec.map(|r| r.to_string())),
    );
    Ok(Exit::Clean)
}
