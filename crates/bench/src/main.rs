//! `backfill-bench`: the side-by-side benchmark of BENCHMARKS.md (this
//! crate's library does the work). It is a package of its own, so that
//! building `backfill` does not build the benchmark; a workspace build puts
//! it next to `backfill`, which it runs.

fn main() {
    std::process::exit(backfill_bench::main());
}
