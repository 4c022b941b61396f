//! `backfill-bench`: the side-by-side benchmark of BENCHMARKS.md (the
//! library `backfill-bench` in crates/bench does the work). It lives in the
//! root package so that it is built next to `backfill` and the tests can
//! run it as `CARGO_BIN_EXE_backfill-bench`.

fn main() {
    std::process::exit(backfill_bench::main());
}
