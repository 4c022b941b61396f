//! A broker that answers but will not open the connection (a virtual host
//! that does not exist, as a typo in `AMQP_URL` gives, or one still starting
//! after a restart): connecting is an error that says what to do, and a
//! worker retries with its backoff, logging each failure. Nothing waits
//! forever on a connection that will never open.

#![allow(clippy::unwrap_used)]

use crate::common::*;
use backfill_queue::Broker;
use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// This test's broker URL with its virtual host replaced by one that does
/// not exist.
fn url_without_vhost() -> String {
    let url = amqp_url();
    let base = url.rsplit_once('/').map(|(b, _)| b).unwrap_or(&url);
    format!("{base}/backfill-no-such-vhost")
}

#[tokio::test(flavor = "multi_thread")]
async fn connecting_to_a_virtual_host_that_does_not_exist_is_an_error_not_a_hang() {
    let env = TestEnv::with_collections(20, 2).await;
    let url = url_without_vhost();
    let started = Instant::now();
    let outcome =
        tokio::time::timeout(Duration::from_secs(90), Broker::connect(&url, env.queues())).await;
    let Ok(outcome) = outcome else {
        panic!("connecting to {url} did not return within 90 s");
    };
    let Err(e) = outcome else {
        panic!("connecting to {url} succeeded");
    };
    let msg = e.to_string();
    eprintln!("after {:?}: {msg}", started.elapsed());
    assert!(msg.contains("cannot connect to RabbitMQ"), "{msg}");
    assert!(msg.contains("backfill-no-such-vhost"), "{msg}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );

    // A mapper keeps trying, and says each time why it cannot start.
    let mut mapper = env
        .cmd(&["mapper"])
        .env("AMQP_URL", &url)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(15)).await;
    let _ = mapper.kill();
    let _ = mapper.wait();
    let mut log = String::new();
    mapper
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    let tries = log.matches("mapper lost the broker").count();
    assert!(tries >= 2, "{tries} attempts logged in 15 s:\n{log}");
    assert!(log.contains("backfill-no-such-vhost"), "{log}");
}
