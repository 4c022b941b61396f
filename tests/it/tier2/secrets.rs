//! Credentials never reach the terminal or the logs: with a password in
//! every form a URL can carry it (userinfo, `?password=`, `?sslpassword=`,
//! a token parameter; PostgreSQL and AMQP alike), every byte a command
//! writes — startup log lines of workers, a run, status, connect errors of
//! services that cannot be reached — is searched for the secrets.

#![allow(clippy::unwrap_used)]

use crate::common::*;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// Every secret string of this test; none may appear in any output.
const SECRETS: [&str; 9] = [
    "SECRETxyz",
    "SECRETssl",
    "SECRETpg",
    "SECRETpq",
    "SECRETamqp",
    "SECRETtok",
    "SECRETbase",
    "SECRETkv",
    "SECRET%40enc",
];

fn with_query(url: &str, query: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{query}")
}

/// A URL that connects (trust auth ignores the password) but carries
/// secrets in its query.
fn db_url(env: &TestEnv) -> String {
    with_query(&env.db_url, "password=SECRETxyz&sslpassword=SECRETssl")
}

/// guest's password is `guest`, too common to search for: the secret is a
/// parameter the broker ignores.
fn amqp(url: &str) -> String {
    with_query(url, "api_token=SECRETtok")
}

fn assert_clean(what: &str, out: &Output) {
    for (stream, bytes) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        let text = String::from_utf8_lossy(bytes);
        for s in SECRETS {
            assert!(!text.contains(s), "{what}: secret {s} in {stream}:\n{text}");
        }
        // The percent-decoded form of the encoded one.
        assert!(!text.contains("SECRET@enc"), "{what}: {stream}:\n{text}");
    }
}

fn show(what: &str, out: &Output) {
    eprintln!(
        "$ {what}\n--- exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a worker for `secs`, stops it with SIGTERM (SIGKILL if it does not
/// stop), and returns what it wrote.
fn run_for(mut cmd: Command, secs: u64) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    if let Ok(out) = rx.recv_timeout(Duration::from_secs(secs)) {
        return out.unwrap();
    }
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid]).status();
            rx.recv_timeout(Duration::from_secs(10)).unwrap().unwrap()
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_command_prints_a_password() {
    let env = TestEnv::with_certificates(6, 300).await;
    let good = |args: &[&str], log: &str| {
        let mut c = env.cmd(args);
        c.env("DATABASE_URL", db_url(&env))
            .env("AMQP_URL", amqp(&amqp_url()))
            .env("RUST_LOG", log);
        c
    };

    // A distributed run (RabbitMQ), its status and report.
    let out = output_within(
        good(
            &["run", "--job", &job("program-certificate-titles"), "--all"],
            "info",
        ),
        Duration::from_secs(300),
    );
    show("run", &out);
    assert_eq!(out.status.code(), Some(0));
    assert_clean("run", &out);
    let run = summary(&out)["run"].clone();
    for (args, log) in [
        (vec!["status", run.as_str()], "trace"),
        (vec!["status"], "info"),
        (vec!["report", run.as_str()], "debug"),
    ] {
        let out = output_within(good(&args, log), Duration::from_secs(120));
        show(&args.join(" "), &out);
        assert_eq!(out.status.code(), Some(0));
        assert_clean(&args.join(" "), &out);
    }

    // Workers: their startup line names both URLs, redacted.
    for role in ["mapper", "reducer"] {
        let out = run_for(good(&[role], "info"), 4);
        show(role, &out);
        assert_clean(role, &out);
        let err = stderr(&out);
        assert!(err.contains(&format!("{role} starting")), "{err}");
        assert!(
            err.contains("password=***") && err.contains("api_token=***"),
            "{err}"
        );
    }

    // Services that cannot be reached (nothing listens on port 1): the
    // connect errors name the URL without its secrets. In parallel: each
    // waits out the pool's acquire timeout.
    let dbs = [
        "postgres://postgres:SECRETpg@127.0.0.1:1/x",
        "postgres://postgres@127.0.0.1:1/x?password=SECRETpq&sslpassword=SECRETssl",
        "postgres://postgres:SECRET%40enc@127.0.0.1:1/x",
        "host=127.0.0.1 port=1 password=SECRETkv",
    ];
    let outs: Vec<Output> = std::thread::scope(|scope| {
        let handles: Vec<_> = dbs
            .iter()
            .map(|db| {
                let mut c = env.cmd(&["status"]);
                c.env("DATABASE_URL", db).env("RUST_LOG", "debug");
                scope.spawn(move || output_within(c, Duration::from_secs(120)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (db, out) in dbs.iter().zip(&outs) {
        show(&format!("status with {db}"), out);
        assert_ne!(out.status.code(), Some(0));
        assert!(stderr(out).contains("error:"), "{}", stderr(out));
        assert_clean(db, out);
    }
    for mq in [
        "amqp://guest:SECRETamqp@127.0.0.1:1/%2f",
        "amqps://guest:SECRETamqp@127.0.0.1:1/%2f?password=SECRETtok",
        // Not a hierarchical URL: the client's parse error quotes it.
        "amqp:guest:SECRETbase@127.0.0.1/%2f",
    ] {
        let mut c = good(
            &["run", "--job", &job("program-certificate-titles"), "--all"],
            "debug",
        );
        c.env("AMQP_URL", mq);
        let out = output_within(c, Duration::from_secs(120));
        show(&format!("run with {mq}"), &out);
        assert_ne!(out.status.code(), Some(0));
        assert_said(&out, "cannot connect to RabbitMQ");
        assert_clean(mq, &out);
        // A mapper keeps retrying the broker, logging each failure.
        let mut c = good(&["mapper"], "info");
        c.env("AMQP_URL", mq);
        let out = run_for(c, 4);
        show(&format!("mapper with {mq}"), &out);
        assert_clean(mq, &out);
    }
}
