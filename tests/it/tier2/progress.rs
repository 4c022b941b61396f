//! The live progress bar, as a person sees it: the command runs in tmux at
//! 80×24 and the pane is read while it works; the same command with stderr
//! in a file gives plain progress lines and the very same stdout.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// tmux drives the terminal; without it this test cannot see a bar, and
/// must say so rather than pass.
fn require_tmux() {
    let ok = Command::new("tmux")
        .arg("-V")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "tmux is missing: these tests drive a terminal with it; install it with `apt-get install tmux`"
    );
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("backfill-progress-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

/// Run ids (`<job>-<time>-<hex>`) differ from run to run: each becomes `RUN`.
fn normalise(text: &str) -> String {
    const JOB: &str = "program-certificate-titles-";
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find(JOB) {
        out.push_str(&rest[..i]);
        let after = &rest[i + JOB.len()..];
        let id_len = after
            .find(|c: char| !(c.is_ascii_hexdigit() || c == '-'))
            .unwrap_or(after.len());
        if id_len == 0 {
            out.push_str(JOB);
        } else {
            out.push_str("RUN");
        }
        rest = &after[id_len..];
    }
    out.push_str(rest);
    out
}

fn capture(session: &str) -> String {
    let o = Command::new("tmux")
        .args(["capture-pane", "-p", "-t", session])
        .output()
        .expect("capture-pane");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A run's bar counts shards; `seed`'s counts what it stores.
const RUN_BAR: (&str, &str) = (" shards ", "rows/s");

fn bar_lines(pane: &str, (unit, rate): (&str, &str)) -> Vec<String> {
    pane.lines()
        .filter(|l| {
            l.contains(unit)
                && l.contains(rate)
                && !l.starts_with("run ")
                && !l.starts_with("seed ")
        })
        .map(str::to_string)
        .collect()
}

/// Runs `backfill ARGS > stdout_file` in a detached 80×24 tmux session;
/// returns the distinct bars seen, after the command ended.
fn in_tmux(session: &str, dir: &Path, env: &str, args: &str, stdout_file: &Path) -> Vec<String> {
    in_tmux_with(session, dir, env, args, stdout_file, RUN_BAR)
}

fn in_tmux_with(
    session: &str,
    dir: &Path,
    env: &str,
    args: &str,
    stdout_file: &Path,
    bar: (&str, &str),
) -> Vec<String> {
    let bin = env!("CARGO_BIN_EXE_backfill");
    let done = dir.join(format!("{session}.done"));
    let _ = std::fs::remove_file(&done);
    // CI and NO_COLOR would (rightly) turn the bar off: this is a person's terminal.
    let script = format!(
        "env -u CI -u NO_COLOR -u RUST_LOG {env} {bin} {args} > {} ; touch {}; sleep 600",
        stdout_file.display(),
        done.display()
    );
    tmux_start(session, dir, &script);
    let started = Instant::now();
    let mut seen: Vec<String> = Vec::new();
    while !done.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the command did not finish in tmux:\n{}",
            capture(session)
        );
        let pane = capture(session);
        let bars = bar_lines(&pane, bar);
        assert!(bars.len() <= 1, "more than one bar in the pane:\n{pane}");
        if let Some(b) = bars.first() {
            assert!(
                b.chars().count() <= 80,
                "the bar is wider than the pane: {b}"
            );
            if seen.last() != Some(b) {
                seen.push(b.clone());
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let pane = capture(session);
    eprintln!("--- the pane of `{args}` at its end\n{pane}");
    let _ = Command::new("tmux")
        .args(["kill-session", "-t", session])
        .status();
    assert!(
        bar_lines(&pane, bar).is_empty(),
        "the bar is left on the screen after the run:\n{pane}"
    );
    seen
}

#[test]
fn demo_draws_a_moving_bar_on_a_terminal_and_plain_lines_in_a_file() {
    require_tmux();
    let dir = scratch("demo");
    let args = "demo --db demo.sqlite3 --revisions 12000 --mappers 1";

    let out_tty = dir.join("stdout-tty.txt");
    let bars = in_tmux("backfill-progress-demo", &dir, "", args, &out_tty);
    assert!(
        bars.len() >= 2,
        "the bar should redraw with moving figures; saw {bars:?}"
    );

    let plain = Command::new(env!("CARGO_BIN_EXE_backfill"))
        .args(args.split(' '))
        .current_dir(&dir)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run demo");
    assert!(plain.status.success(), "{plain:?}");
    let err = String::from_utf8_lossy(&plain.stderr);
    assert!(
        err.lines()
            .any(|l| l.contains(" shards (") && l.contains("rows/s")),
        "no plain progress lines on stderr in a file:\n{err}"
    );
    assert!(
        !err.contains('\r') && !err.contains('\u{1b}'),
        "control characters in the plain lines:\n{err}"
    );
    assert!(!err.contains("ERROR"), "{err}");

    let tty = std::fs::read_to_string(&out_tty).expect("stdout of the tmux run");
    let file = String::from_utf8_lossy(&plain.stdout);
    assert!(tty.contains("Summary:"), "{tty}");
    assert_eq!(
        normalise(&tty),
        normalise(&file),
        "stdout differs with and without a terminal"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `run` over RabbitMQ on PostgreSQL, throttled so that it lasts a few
/// seconds: the bar moves on a terminal, plain lines go to a file, and no
/// ERROR line appears on a healthy run.
#[tokio::test(flavor = "multi_thread")]
async fn run_draws_a_moving_bar_and_plain_lines_with_the_same_stdout() {
    require_tmux();
    let env = common::TestEnv::new().await;
    env.seed_certificates(20, 3000).await;
    let dir = scratch("run");
    let job = common::job("program-certificate-titles");
    let args = format!("run --job {job} --all --shard-size 20 --rows-per-sec 300");
    let vars = service_vars(&env);
    let out_tty = dir.join("stdout-tty.txt");
    let bars = in_tmux("backfill-progress-run", &dir, &vars, &args, &out_tty);
    assert!(
        bars.len() >= 2,
        "the bar should redraw with moving figures; saw {bars:?}"
    );
    let plain = env.run(&args.split(' ').collect::<Vec<_>>());
    let err = common::stderr(&plain);
    assert!(
        err.lines()
            .any(|l| l.contains(" shards (") && l.contains("rows/s")),
        "no plain progress lines on stderr in a file:\n{err}"
    );
    assert!(!err.contains("ERROR"), "{err}");
    let tty = std::fs::read_to_string(&out_tty).expect("stdout of the tmux run");
    assert!(tty.contains("Summary:"), "{tty}");
    assert_eq!(
        normalise(&tty),
        normalise(&common::stdout(&plain)),
        "stdout differs with and without a terminal"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The environment of a command in a pane: this test's database, broker
/// and queues.
fn service_vars(env: &common::TestEnv) -> String {
    format!(
        "DATABASE_URL='{}' AMQP_URL='{}' BACKFILL_QUEUE_PREFIX='{}'",
        env.db_url,
        common::amqp_url(),
        env.prefix
    )
}

/// A command run in a pane (`bars` seen, its stdout in `out_tty`) and
/// again with stderr in a file (`plain`): the bar moved, the file got plain
/// lines, and stdout is the same both ways.
fn assert_both_ways(name: &str, bars: &[String], out_tty: &Path, plain: &std::process::Output) {
    assert!(
        bars.len() >= 2,
        "`{name}`: the bar should redraw with moving figures; saw {bars:?}; stdout:\n{}",
        std::fs::read_to_string(out_tty).unwrap_or_default()
    );
    assert_plain_lines(&common::stderr(plain), "shards", "rows/s");
    let tty = std::fs::read_to_string(out_tty).expect("stdout of the tmux run");
    assert!(tty.contains("Summary:"), "`{name}`: {tty}");
    assert_eq!(
        normalise(&tty),
        normalise(&common::stdout(plain)),
        "`{name}`: stdout differs with and without a terminal"
    );
}

/// The plain progress lines of a command whose stderr went to a file.
fn assert_plain_lines(err: &str, unit: &str, rate: &str) {
    assert!(
        err.lines()
            .any(|l| l.contains(&format!(" {unit} (")) && l.contains(rate)),
        "no plain progress lines on stderr in a file:\n{err}"
    );
    assert!(
        !err.contains('\r') && !err.contains('\u{1b}'),
        "control characters in the plain lines:\n{err}"
    );
    assert!(!err.contains("ERROR"), "{err}");
}

/// `coordinator --wait` with mapper processes, `verify` and `revert`, on
/// PostgreSQL and RabbitMQ, throttled by the spec so that each lasts a few
/// seconds: each draws a moving bar on a terminal, writes plain lines to a
/// file, and prints the same stdout both ways.
#[tokio::test(flavor = "multi_thread")]
async fn coordinator_wait_verify_and_revert_draw_a_moving_bar_and_plain_lines() {
    require_tmux();
    let env = common::TestEnv::new().await;
    env.seed_certificates(20, 3000).await;
    let dir = scratch("commands");
    let text = std::fs::read_to_string(common::job("program-certificate-titles")).expect("job");
    let spec = common::SpecFile::new(
        "program-certificate-titles",
        &format!("{text}\n[throttle]\nrows_per_sec = 400\n"),
    );
    let mut fleet = common::fleet::Fleet::new(&env);
    fleet.start(1);
    let vars = service_vars(&env);
    let both_ways = |name: &str, args: &str| {
        let out_tty = dir.join(format!("stdout-{name}.txt"));
        let bars = in_tmux(
            &format!("backfill-progress-{name}"),
            &dir,
            &vars,
            args,
            &out_tty,
        );
        let plain = env.run(&args.split(' ').collect::<Vec<_>>());
        assert_both_ways(name, &bars, &out_tty, &plain);
    };
    let spec = spec.path();
    both_ways(
        "coordinator",
        &format!("coordinator --job {spec} --all --wait --shard-size 20"),
    );
    both_ways(
        "verify",
        &format!("verify --job {spec} --all --shard-size 20"),
    );
    let commit =
        common::fleet::coordinator_output(common::fleet::spawn_coordinator(&env, spec, "20"));
    assert_eq!(commit.status.code(), Some(0));
    let run = common::stdout(&commit)
        .lines()
        .next()
        .expect("the run id")
        .to_string();
    both_ways("revert", &format!("revert {run} --shard-size 20"));

    let _ = std::fs::remove_dir_all(&dir);
}

/// `seed` into two fresh SQLite files: a moving bar of revisions stored
/// on a terminal, plain lines in a file, the same stdout both ways.
#[test]
fn seed_draws_a_moving_bar_and_plain_lines_with_the_same_stdout() {
    require_tmux();
    let dir = scratch("seed");
    let args = "seed --dataset certificates --revisions 15000";
    let out_tty = dir.join("stdout-tty.txt");
    let bars = in_tmux_with(
        "backfill-progress-seed",
        &dir,
        &format!("DATABASE_URL=sqlite://{}/tty.sqlite3", dir.display()),
        args,
        &out_tty,
        (" revisions ", "revisions/s"),
    );
    assert!(
        bars.len() >= 2,
        "the bar should redraw with moving figures; saw {bars:?}"
    );
    let plain = Command::new(env!("CARGO_BIN_EXE_backfill"))
        .args(args.split(' '))
        .env(
            "DATABASE_URL",
            format!("sqlite://{}/file.sqlite3", dir.display()),
        )
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run seed");
    assert!(plain.status.success(), "{plain:?}");
    assert_plain_lines(
        &String::from_utf8_lossy(&plain.stderr),
        "revisions",
        "revisions/s",
    );
    let tty = std::fs::read_to_string(&out_tty).expect("stdout of the tmux run");
    let file = String::from_utf8_lossy(&plain.stdout);
    assert!(tty.starts_with("Seeded: dataset=certificates "), "{tty}");
    assert_eq!(tty, file, "stdout differs with and without a terminal");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Starts `script` in a detached 80×24 tmux session.
fn tmux_start(session: &str, dir: &Path, script: &str) {
    let _ = Command::new("tmux")
        .args(["kill-session", "-t", session])
        .stderr(Stdio::null())
        .status();
    let st = Command::new("tmux")
        .args([
            "new-session",
            "-d",
            "-s",
            session,
            "-x",
            "80",
            "-y",
            "24",
            "-c",
            &dir.display().to_string(),
            script,
        ])
        .status()
        .expect("tmux new-session");
    assert!(st.success(), "tmux new-session failed");
}

/// Waits until the pane satisfies `what`, for at most `secs`.
fn wait_pane(session: &str, secs: u64, why: &str, what: impl Fn(&str) -> bool) -> String {
    let started = Instant::now();
    loop {
        let pane = capture(session);
        if what(&pane) {
            return pane;
        }
        assert!(
            started.elapsed() < Duration::from_secs(secs),
            "{why}; the pane:\n{pane}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn ctrl_c(session: &str) {
    let st = Command::new("tmux")
        .args(["send-keys", "-t", session, "C-c"])
        .status()
        .expect("tmux send-keys");
    assert!(st.success());
}

/// `retry` of a dry run whose rows all failed (documents that are not
/// objects), throttled by the spec so that it lasts several seconds: the
/// bar moves on a terminal, plain lines go to a file, and stdout is the
/// same both ways. A retry consumes its run's quarantine, so the pane and
/// the file each retry a failed run of their own.
#[tokio::test(flavor = "multi_thread")]
async fn retry_draws_a_moving_bar_and_plain_lines_with_the_same_stdout() {
    require_tmux();
    let env = common::TestEnv::new().await;
    env.seed_certificates(20, 3000).await;
    let dir = scratch("retry");
    let text = std::fs::read_to_string(common::job("program-certificate-titles")).expect("job");
    let spec = common::SpecFile::new(
        "program-certificate-titles",
        &format!("{text}\n[throttle]\nrows_per_sec = 120\n"),
    );
    let spec = spec.path();
    sqlx::query("UPDATE wagtailcore_revision SET content = '[1]'::jsonb")
        .execute(&env.pool)
        .await
        .expect("break every revision");
    let failed_dry_run = || {
        let out = env.run(&common::job_args(
            "run",
            spec,
            "--all --shard-size 20 --rows-per-sec 100000",
        ));
        let s = common::summary(&out);
        assert!(
            common::num(&s, "errors") >= 600,
            "{s:?}\n{}",
            common::stderr(&out)
        );
        s["run"].clone()
    };
    let (a, b) = (failed_dry_run(), failed_dry_run());
    let vars = service_vars(&env);
    let out_tty = dir.join("stdout-retry.txt");
    let bars = in_tmux(
        "backfill-progress-retry",
        &dir,
        &vars,
        &format!("retry {a} --shard-size 20"),
        &out_tty,
    );
    let started = Instant::now();
    let plain = env.run(&["retry", &b, "--shard-size", "20"]);
    // The spec's throttle holds for a retry: 600 rows or more at 120 a
    // second take 5 s at the very least.
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "the retry ignored the spec's rows_per_sec: {:?}\n{}",
        started.elapsed(),
        common::stderr(&plain)
    );
    // The two retries are of two runs: their run ids differ, the rest not.
    assert_both_ways("retry", &bars, &out_tty, &plain);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A first Ctrl-C on the bar stops after the shards in hand and names the
/// command that resumes the run (exit 1, an interrupted wait); a second
/// one stops at once (exit 130); the run, taken up again, ends exact.
#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_stops_after_the_shards_in_hand_and_twice_at_once() {
    require_tmux();
    let env = common::TestEnv::new().await;
    env.seed_certificates(20, 3000).await;
    let dir = scratch("ctrl-c");
    let job = common::job("program-certificate-titles");
    let args = format!("run --job {job} --all --shard-size 20 --rows-per-sec 100");
    let bin = env!("CARGO_BIN_EXE_backfill");
    let session = "backfill-progress-ctrl-c";
    let start = |tag: &str| {
        let code = dir.join(format!("{tag}.code"));
        tmux_start(
            session,
            &dir,
            &format!(
                "env -u CI -u NO_COLOR -u RUST_LOG DATABASE_URL='{}' AMQP_URL='{}' BACKFILL_QUEUE_PREFIX='{}' {bin} {args} > /dev/null; echo $? > {}; sleep 600",
                env.db_url,
                common::amqp_url(),
                env.prefix,
                code.display()
            ),
        );
        code
    };
    let exit_code = |code: &Path, secs: u64| {
        let started = Instant::now();
        loop {
            if let Some(c) = std::fs::read_to_string(code)
                .ok()
                .and_then(|t| t.trim().parse::<i32>().ok())
            {
                return c;
            }
            assert!(
                started.elapsed() < Duration::from_secs(secs),
                "the command did not stop within {secs} s:\n{}",
                capture(session)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let moving = |p: &str| !bar_lines(p, RUN_BAR).is_empty();

    // Once: stop after the shards in hand, naming the resume command.
    let code = start("once");
    wait_pane(session, 60, "no bar was drawn", moving);
    ctrl_c(session);
    let pane = wait_pane(session, 10, "the first Ctrl-C said nothing", |p| {
        p.contains("Stopping after the shards in hand")
    });
    let flat = pane.replace('\n', "");
    assert!(flat.contains("backfill coordinator --resume"), "{pane}");
    assert!(flat.contains("Ctrl-C again"), "{pane}");
    assert_eq!(exit_code(&code, 30), 1, "an interrupted wait exits 1");
    let run: String = sqlx::query_scalar("SELECT run_id FROM backfill_run")
        .fetch_one(&env.pool)
        .await
        .expect("one run");
    let pending = env
        .scalar_i64(&format!(
            "SELECT count(*) FROM backfill_shard WHERE run_id = '{run}' AND state <> 'done'"
        ))
        .await;
    assert!(pending > 0, "the run was stopped before its end");

    // Twice: stop at once. The revisions are held by another transaction,
    // so the shards in hand cannot end between the two Ctrl-Cs (a shard
    // of 20 rows otherwise ends in well under the time between them, and
    // the first Ctrl-C alone would stop the command).
    let mut hold = env.pool.begin().await.expect("begin");
    sqlx::query("LOCK TABLE wagtailcore_revision IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *hold)
        .await
        .expect("hold the revisions");
    let before: f64 = sqlx::query_scalar("SELECT extract(epoch FROM clock_timestamp())::float8")
        .fetch_one(&env.pool)
        .await
        .expect("the server's clock");
    let code = start("twice");
    wait_pane(session, 60, "no bar was drawn", moving);
    // A shard in hand: claimed by this command (the throttle may hold the
    // first claim back a moment after the bar is drawn).
    let claimed = Instant::now();
    while env
        .scalar_i64(&format!(
            "SELECT count(*) FROM backfill_shard WHERE run_id = '{run}' AND state = 'running'
               AND started_at > to_timestamp({before})"
        ))
        .await
        == 0
    {
        assert!(
            claimed.elapsed() < Duration::from_secs(30),
            "no shard was claimed after the restart:\n{}",
            capture(session)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    ctrl_c(session);
    wait_pane(session, 10, "the first Ctrl-C said nothing", |p| {
        p.matches("Stopping after the shards in hand").count() >= 1
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        std::fs::read_to_string(&code).is_err(),
        "the first Ctrl-C alone stopped a command whose shards in hand were held:\n{}",
        capture(session)
    );
    ctrl_c(session);
    assert_eq!(exit_code(&code, 5), 130, "a second Ctrl-C stops at once");
    hold.rollback().await.expect("release the revisions");
    let _ = Command::new("tmux")
        .args(["kill-session", "-t", session])
        .status();

    // Taken up again, the one run ends with every target row counted once.
    let out = env.run(&args.split(' ').collect::<Vec<_>>());
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
    let s = common::summary(&out);
    assert_eq!(s.get("run"), Some(&run), "the same run was taken up again");
    // The adoption is said in one line naming the run's kind.
    assert!(
        common::stderr(&out).contains(&format!("adopting run {run}: a forward run")),
        "{}",
        common::stderr(&out)
    );
    // Its throttle is the one it was planned with, and the flag says so.
    assert!(
        common::stderr(&out)
            .contains("--rows-per-sec, --max-in-flight and --priority are not applied"),
        "{}",
        common::stderr(&out)
    );
    let planned = env
        .scalar_i64(&format!(
            "SELECT coalesce(sum(rows), 0)::int8 FROM backfill_shard WHERE run_id = '{run}'"
        ))
        .await;
    assert_eq!(
        s.get("processed").map(String::as_str),
        Some(planned.to_string().as_str())
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `status RUN --watch` in an 80×24 pane redraws in place: after more than
/// five redraws the pane holds exactly one copy of the run's header line
/// (wider than 80 columns, so it would wrap), and no line is wider than
/// the pane.
#[tokio::test(flavor = "multi_thread")]
async fn status_watch_redraws_in_place_on_an_80_column_terminal() {
    require_tmux();
    let env = common::TestEnv::new().await;
    env.seed_certificates(20, 3000).await;
    let dir = scratch("watch");
    let mut fleet = common::fleet::Fleet::new(&env);
    fleet.start(1);
    let job = common::job("program-certificate-titles");
    let out = env.run(&common::job_args(
        "coordinator",
        &job,
        "--all --shard-size 20 --rows-per-sec 100",
    ));
    assert_eq!(out.status.code(), Some(0));
    let run = common::stdout(&out)
        .lines()
        .next()
        .expect("the run id")
        .to_string();
    let session = "backfill-progress-watch";
    tmux_start(
        session,
        &dir,
        &format!(
            "env -u CI -u NO_COLOR -u RUST_LOG DATABASE_URL='{}' {} status {run} --watch --interval 0.2; sleep 600",
            env.db_url,
            env!("CARGO_BIN_EXE_backfill"),
        ),
    );
    let header = format!("run {run} ");
    wait_pane(session, 30, "status --watch drew nothing", |p| {
        p.contains(&header)
    });
    std::thread::sleep(Duration::from_millis(1_500));
    for _ in 0..5 {
        let pane = capture(session);
        assert_eq!(
            pane.lines().filter(|l| l.starts_with(&header)).count(),
            1,
            "one copy of the header after redraws:\n{pane}"
        );
        assert!(
            pane.lines().all(|l| l.trim_end().chars().count() <= 80),
            "a line wider than the pane:\n{pane}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let _ = Command::new("tmux")
        .args(["kill-session", "-t", session])
        .status();
    let _ = std::fs::remove_dir_all(&dir);
}
