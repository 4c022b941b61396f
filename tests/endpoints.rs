//! The HTTP endpoints against hostile or malformed requests, through the
//! real `backfill` binary and the real database.

#![allow(clippy::unwrap_used)]

mod common;

use common::fleet::*;
use common::steer::*;
use common::*;

/// A run id the database cannot take (a NUL byte) or that is absurdly long
/// is refused as a bad request, and the body carries no database internals.
#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_run_id_is_a_bad_request_without_internals() {
    let env = TestEnv::new().await;
    let mut fleet = Fleet::new(&env);
    let port = free_port();
    let dash = fleet.spawn(&["dashboard", "--listen", &format!("127.0.0.1:{port}")]);
    fleet.mappers.push(dash); // killed with the fleet
    let long = format!("/api/runs/{}", "a".repeat(1_000));
    for path in [
        "/api/runs/%00",
        "/api/runs/%00/shards",
        "/api/runs/%00/throughput",
        "/api/runs/%00/report",
        "/api/runs/a%01b",
        long.as_str(),
    ] {
        let (code, body) = http_get(port, path);
        assert!(code == 400 || code == 404, "{path}: {code} {body}");
        for leak in ["SQL", "sql", "postgres", "error returned from database"] {
            assert!(!body.contains(leak), "{path} leaks {leak:?}: {body}");
        }
    }
    let (code, _) = http_get(port, "/api/runs/no-such-run");
    assert_eq!(code, 404);
}
