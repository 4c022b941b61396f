//! The deploy/ directory, checked as part of the test suite: every file is
//! validated with its tool (hadolint, the compose-spec schema,
//! kubernetes-validate, systemd-analyze) and one job runs end to end with
//! the workers connecting as the least-privilege user of
//! deploy/rabbitmq/definitions.json. See deploy/check.sh.

use std::process::Command;

#[test]
fn deploy_files_validate_and_a_job_runs_as_the_least_privilege_worker() {
    let script = format!("{}/deploy/check.sh", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(&script)
        .env("BACKFILL_BIN", env!("CARGO_BIN_EXE_backfill"))
        .env_remove("DATABASE_URL")
        .env_remove("AMQP_URL")
        .env_remove("BACKFILL_QUEUE_PREFIX")
        .output()
        .expect("run deploy/check.sh");
    println!("{}", String::from_utf8_lossy(&out.stdout));
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "deploy/check.sh failed (exit {:?})",
        out.status.code()
    );
}
