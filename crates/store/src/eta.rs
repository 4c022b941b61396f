//! A run's ETA from its recent throughput, as a pure function of the shard
//! ledger (what each shard holds, when it finished, when it was folded), the
//! clock and the throttle.
//!
//! - Rows left are the planned rows of shards not finished (neither done
//!   nor dead), over the rate of finished rows, exponentially weighted with
//!   a half-life of [`HALF_LIFE_SECONDS`] (longer when shards finish further
//!   apart, so a run of big shards does not swing between completions): a
//!   throttle change or a slowdown shows within a minute, not after the
//!   whole-run average catches up.
//! - A run ends when its last shard is folded: the shards not yet reduced,
//!   over the reducer's recent fold rate (shards per second, weighted the
//!   same way), bound the ETA from below — a reducer behind its mappers
//!   counts.
//! - Under a rows-per-second throttle, the rows left cannot go faster:
//!   `rows_left / rows_per_sec` bounds the ETA from below too.
//!
//! The ETA is the largest of the three; `null` when the run finished, is
//! paused or cancelled, or nothing was finished or folded yet to measure.

use serde::Serialize;

/// Half-life of the recent rates: a shard finished this long ago weighs
/// half as much as one finished now.
pub const HALF_LIFE_SECONDS: f64 = 30.0;

/// The half-life is at least this many times the mean gap between the
/// last [`GAP_SHARDS`] completions.
const GAP_FACTOR: f64 = 4.0;
const GAP_SHARDS: usize = 16;

/// One shard as the ETA sees it; times are seconds since the epoch, on one
/// clock (the ledger's).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct EtaShard {
    /// Planned rows.
    pub rows: u64,
    pub started_at: Option<f64>,
    /// When it finished (done or dead); `None` while pending or running.
    pub finished_at: Option<f64>,
    /// When a reducer folded it; `None` until then.
    pub reduced_at: Option<f64>,
}

/// What the ETA is computed from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EtaInput<'a> {
    pub shards: &'a [EtaShard],
    /// The ledger's clock now.
    pub now: f64,
    /// The run is `running` (not done, failed or cancelled).
    pub running: bool,
    /// The operator's control is `run` (not paused, not cancelling).
    pub go: bool,
    /// The throttle in force, if any.
    pub rows_per_sec_limit: Option<f64>,
}

/// Which bound gave the ETA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EtaBasis {
    /// Rows left over the recent rate of finished rows.
    Mappers,
    /// Shards not yet folded over the reducer's recent fold rate.
    Reducer,
    /// Rows left over the throttle's rows per second.
    Throttle,
}

impl EtaBasis {
    pub fn as_str(self) -> &'static str {
        match self {
            EtaBasis::Mappers => "mappers",
            EtaBasis::Reducer => "reducer",
            EtaBasis::Throttle => "throttle",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Eta {
    pub seconds: Option<f64>,
    pub basis: Option<EtaBasis>,
    /// Rows of finished shards per second, exponentially weighted.
    pub rows_per_sec_recent: f64,
    /// Shards folded per second, exponentially weighted.
    pub shards_reduced_per_sec_recent: f64,
    /// Planned rows of shards not finished.
    pub rows_left: u64,
    /// Shards not yet folded.
    pub shards_unreduced: u64,
}

/// The half-life for completions at `times` (sorted): [`HALF_LIFE_SECONDS`],
/// or longer when the last completions were far apart.
fn half_life(times: &[f64]) -> f64 {
    let last = &times[times.len().saturating_sub(GAP_SHARDS + 1)..];
    let gap = match (last.first(), last.last()) {
        (Some(a), Some(b)) if last.len() > 1 => (b - a) / (last.len() - 1) as f64,
        _ => 0.0,
    };
    HALF_LIFE_SECONDS.max(GAP_FACTOR * gap)
}

/// Events per second (`(time, weight)`, sorted by time) since `since`,
/// exponentially weighted: the decayed sum of the weights over the decayed
/// length of the window, so a window shorter than the half-life is a plain
/// average and a quiet spell since the last event lowers the rate.
fn decayed_rate(events: &[(f64, f64)], since: f64, now: f64) -> f64 {
    let span = now - since;
    if events.is_empty() || !span.is_finite() || span <= 0.0 {
        return 0.0;
    }
    let times: Vec<f64> = events.iter().map(|e| e.0).collect();
    let k = std::f64::consts::LN_2 / half_life(&times);
    let mass: f64 = events
        .iter()
        .map(|(t, w)| w * (-k * (now - t).max(0.0)).exp())
        .sum();
    let window = -(-k * span).exp_m1() / k;
    if window > 0.0 {
        mass / window
    } else {
        0.0
    }
}

/// The run's ETA and the recent rates it comes from.
pub fn estimate(input: &EtaInput<'_>) -> Eta {
    let now = input.now;
    let since = input
        .shards
        .iter()
        .filter_map(|s| s.started_at.or(s.finished_at))
        .fold(f64::INFINITY, f64::min);
    let mut finished: Vec<(f64, f64)> = Vec::new();
    let mut folded: Vec<(f64, f64)> = Vec::new();
    let mut rows_left = 0u64;
    let mut shards_unreduced = 0u64;
    for s in input.shards {
        match s.finished_at {
            Some(t) => finished.push((t, s.rows as f64)),
            None => rows_left += s.rows,
        }
        match s.reduced_at {
            Some(t) => folded.push((t, 1.0)),
            None => shards_unreduced += 1,
        }
    }
    finished.sort_by(|a, b| a.0.total_cmp(&b.0));
    folded.sort_by(|a, b| a.0.total_cmp(&b.0));
    let rows_rate = decayed_rate(&finished, since, now);
    let fold_rate = decayed_rate(&folded, since, now);
    let mut eta = Eta {
        seconds: None,
        basis: None,
        rows_per_sec_recent: rows_rate,
        shards_reduced_per_sec_recent: fold_rate,
        rows_left,
        shards_unreduced,
    };
    if !input.running || !input.go {
        return eta;
    }
    // Each bound: `None` when it cannot be measured yet.
    let mappers = if rows_left == 0 {
        Some(0.0)
    } else if rows_rate > 0.0 {
        Some(rows_left as f64 / rows_rate)
    } else {
        None
    };
    let reducer = if shards_unreduced == 0 {
        Some(0.0)
    } else if fold_rate > 0.0 {
        Some(shards_unreduced as f64 / fold_rate)
    } else {
        None
    };
    let throttle = input
        .rows_per_sec_limit
        .filter(|r| r.is_finite() && *r > 0.0)
        .map(|r| rows_left as f64 / r);
    let (Some(m), Some(r)) = (mappers, reducer) else {
        return eta;
    };
    let mut best = (m, EtaBasis::Mappers);
    if r > best.0 {
        best = (r, EtaBasis::Reducer);
    }
    if let Some(t) = throttle {
        if t > best.0 {
            best = (t, EtaBasis::Throttle);
        }
    }
    eta.seconds = Some(best.0);
    eta.basis = Some(best.1);
    eta
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` shards of `rows`, the i-th starting at `start(i)` and finishing
    /// `took` later, folded `fold_lag` after that; only what happened by
    /// `now` is recorded.
    fn timeline(
        n: usize,
        rows: u64,
        start: impl Fn(usize) -> f64,
        took: f64,
        fold_lag: f64,
        now: f64,
    ) -> Vec<EtaShard> {
        (0..n)
            .map(|i| {
                let s = start(i);
                let f = s + took;
                let r = f + fold_lag;
                EtaShard {
                    rows,
                    started_at: (s <= now).then_some(s),
                    finished_at: (f <= now).then_some(f),
                    reduced_at: (r <= now).then_some(r),
                }
            })
            .collect()
    }

    fn at(shards: &[EtaShard], now: f64, limit: Option<f64>) -> Eta {
        estimate(&EtaInput {
            shards,
            now,
            running: true,
            go: true,
            rows_per_sec_limit: limit,
        })
    }

    fn secs(e: &Eta) -> f64 {
        e.seconds.expect("an ETA")
    }

    fn near(got: f64, want: f64, tolerance: f64) -> bool {
        (got / want - 1.0).abs() <= tolerance
    }

    #[test]
    fn a_steady_run_gets_the_time_it_actually_has_left() {
        // 100 shards of 100 rows, one finishing every second: 100 rows/s.
        let start = 1_000_000.0;
        for (now, left) in [(25.5, 75.0), (50.5, 50.0), (90.5, 10.0)] {
            let shards = timeline(100, 100, |i| start + i as f64, 1.0, 0.05, start + now);
            let e = at(&shards, start + now, None);
            assert!(
                near(secs(&e), left, 0.05),
                "at {now} s: ETA {:?}, {left} s left",
                e.seconds
            );
            assert_eq!(e.basis, Some(EtaBasis::Mappers));
            assert!(near(e.rows_per_sec_recent, 100.0, 0.05), "{e:?}");
        }
    }

    #[test]
    fn the_first_measurement_waits_for_a_finished_and_a_folded_shard() {
        let t0 = 500.0;
        let none_done = timeline(10, 100, |i| t0 + i as f64, 5.0, 0.1, t0 + 3.0);
        let e = at(&none_done, t0 + 3.0, None);
        assert_eq!(e.seconds, None, "nothing finished: no rate yet");
        assert_eq!(e.rows_left, 1_000);
        let done_unfolded = timeline(10, 100, |i| t0 + i as f64, 1.0, 5.0, t0 + 2.5);
        assert_eq!(
            at(&done_unfolded, t0 + 2.5, None).seconds,
            None,
            "nothing folded: no fold rate yet"
        );
        // With a throttle the bound is known, but there is still no rate.
        assert_eq!(at(&none_done, t0 + 3.0, Some(10.0)).seconds, None);
    }

    #[test]
    fn a_throttle_lowered_mid_run_shows_at_once() {
        // 60 s at 1,000 rows/s, then throttled to 100 rows/s for 30 s.
        // The whole-run average said 53 s left.
        let t0 = 10_000.0;
        let fast = 600usize; // 100-row shards every 0.1 s
        let start = |i: usize| {
            if i < fast {
                t0 + i as f64 * 0.1
            } else {
                t0 + 60.0 + (i - fast) as f64
            }
        };
        let now = t0 + 90.5;
        let shards = timeline(1_000, 100, start, 0.05, 0.01, now);
        let e = at(&shards, now, Some(100.0));
        // Shards 0..=630 finished: 369 left, 1 s each.
        assert_eq!(e.rows_left, 36_900);
        let left = 369.0;
        let whole_run = (631.0 * 100.0) / 90.5;
        let old = 36_900.0 / whole_run;
        assert!(
            near(secs(&e), left, 0.02),
            "ETA {:?}, {left} s left (the whole-run average said {old:.0} s)",
            e.seconds
        );
        assert_eq!(e.basis, Some(EtaBasis::Throttle));
    }

    #[test]
    fn a_slowdown_without_a_throttle_shows_within_a_minute() {
        // 60 s at 1,000 rows/s, then 100 rows/s (a slower database).
        let t0 = 10_000.0;
        let fast = 600usize;
        let start = |i: usize| {
            if i < fast {
                t0 + i as f64 * 0.1
            } else {
                t0 + 60.0 + (i - fast) as f64
            }
        };
        let eta_at = |after: f64| {
            let now = t0 + 60.0 + after + 0.5;
            let shards = timeline(2_000, 100, start, 0.05, 0.01, now);
            let done = shards.iter().filter(|s| s.finished_at.is_some()).count();
            let left = (2_000 - done) as f64;
            let whole_run = done as f64 * 100.0 / (now - t0);
            let old = left * 100.0 / whole_run;
            (secs(&at(&shards, now, None)), left, old)
        };
        // (ETA, time left, the whole-run average's ETA) 30 s, 60 s, 150 s
        // after the slowdown: 284/1369, 481/1339 and 1031/1249 s. An
        // exponentially weighted rate lags a tenfold drop, but the whole-run
        // average (196, 244 and 350 s) stays 3.5 to 7 times too low.
        let (e30, left30, old30) = eta_at(30.0);
        let (e60, left60, old60) = eta_at(60.0);
        let (e150, left150, old150) = eta_at(150.0);
        assert!(old60 < left60 * 0.2, "{old60} vs {left60}");
        assert!(old150 < left150 * 0.3, "{old150} vs {left150}");
        assert!(
            e30 > old30 * 1.4 && e30 < left30,
            "{e30} vs {old30}, {left30}"
        );
        assert!(
            e60 > old60 * 1.9 && e60 < left60,
            "{e60} vs {old60}, {left60}"
        );
        assert!(near(e150, left150, 0.2), "{e150} vs {left150}");
        assert!(e30 < e60, "{e30} {e60}");
    }

    #[test]
    fn a_throttle_raised_mid_run_lowers_the_eta_as_the_rate_rises() {
        // 100 rows/s for 60 s, then 1,000 rows/s.
        let t0 = 0.0;
        let slow = 60usize;
        let start = |i: usize| {
            if i < slow {
                t0 + i as f64
            } else {
                t0 + 60.0 + (i - slow) as f64 * 0.1
            }
        };
        let mut last = f64::INFINITY;
        for after in [5.0, 20.0, 40.0, 80.0] {
            let now = t0 + 60.0 + after + 0.05;
            let shards = timeline(2_000, 100, start, 0.02, 0.01, now);
            let e = at(&shards, now, Some(1_000.0));
            let left = e.rows_left as f64 / 1_000.0;
            let s = secs(&e);
            assert!(s >= left * 0.999, "never below the throttle's bound");
            assert!(
                s < last,
                "the ETA falls as the new rate shows: {s} after {last}"
            );
            last = s;
            if after >= 80.0 {
                assert!(near(s, left, 0.2), "{s} vs {left}");
            }
        }
    }

    #[test]
    fn a_throttle_bounds_the_eta_from_below() {
        // Four shards finished in the first half second (a burst), 10 rows/s allowed.
        let t0 = 0.0;
        let shards = timeline(40, 10, |i| t0 + (i as f64) * 0.1, 0.01, 0.01, t0 + 0.35);
        let e = at(&shards, t0 + 0.35, Some(10.0));
        assert_eq!(e.rows_left, 360);
        assert_eq!(e.seconds, Some(36.0));
        assert_eq!(e.basis, Some(EtaBasis::Throttle));
        assert!(e.rows_per_sec_recent > 10.0);
    }

    #[test]
    fn a_reducer_behind_its_mappers_counts() {
        // 3,430 shards: the mappers did them all in 60 s; the reducer
        // folds 27 a second and is 2,400 behind.
        let t0 = 0.0;
        let n = 3_430usize;
        let now = 60.0;
        let shards: Vec<EtaShard> = (0..n)
            .map(|i| {
                let f = t0 + 1.0 + i as f64 * (58.0 / n as f64);
                EtaShard {
                    rows: 100,
                    started_at: Some(f - 0.5),
                    finished_at: Some(f),
                    reduced_at: (i < 1_030).then(|| t0 + 1.0 + i as f64 / 1_030.0 * (now - 1.0)),
                }
            })
            .collect();
        let e = at(&shards, now, None);
        assert_eq!(e.rows_left, 0);
        assert_eq!(e.shards_unreduced, 2_400);
        assert_eq!(e.basis, Some(EtaBasis::Reducer));
        let want = 2_400.0 / (1_030.0 / 59.0);
        assert!(near(secs(&e), want, 0.05), "{e:?}, want {want}");
        assert!(secs(&e) > 80.0);
    }

    #[test]
    fn a_stopped_reducer_makes_the_eta_grow() {
        let t0 = 0.0;
        let shards_at = |now: f64| {
            // Folding stopped at 20 s; mappers go on at 1 shard/s.
            let mut s = timeline(100, 100, |i| t0 + i as f64, 1.0, 0.1, now);
            for x in &mut s {
                x.reduced_at = x.reduced_at.filter(|r| *r < t0 + 20.0);
            }
            s
        };
        let e25 = secs(&at(&shards_at(25.0), 25.0, None));
        let e50 = secs(&at(&shards_at(50.0), 50.0, None));
        let e80 = secs(&at(&shards_at(80.0), 80.0, None));
        assert!(e25 < e50 && e50 < e80, "{e25} {e50} {e80}");
        assert_eq!(
            at(&shards_at(50.0), 50.0, None).basis,
            Some(EtaBasis::Reducer)
        );
    }

    #[test]
    fn paused_cancelled_or_finished_runs_have_no_eta() {
        let shards = timeline(10, 100, |i| i as f64, 1.0, 0.1, 5.5);
        let base = EtaInput {
            shards: &shards,
            now: 5.5,
            running: true,
            go: true,
            rows_per_sec_limit: None,
        };
        assert!(estimate(&base).seconds.is_some());
        let paused = estimate(&EtaInput { go: false, ..base });
        assert_eq!(paused.seconds, None);
        assert_eq!(paused.basis, None);
        assert!(paused.rows_per_sec_recent > 0.0, "the rates still show");
        let done = timeline(10, 100, |i| i as f64, 1.0, 0.1, 20.0);
        let finished = estimate(&EtaInput {
            shards: &done,
            now: 20.0,
            running: false,
            ..base
        });
        assert_eq!(finished.seconds, None);
        assert_eq!(finished.rows_left, 0);
    }

    #[test]
    fn a_run_with_every_shard_folded_has_nothing_left() {
        let done = timeline(10, 100, |i| i as f64, 1.0, 0.1, 20.0);
        let e = at(&done, 20.0, Some(5.0));
        assert_eq!(e.seconds, Some(0.0));
    }

    #[test]
    fn dead_shards_are_finished_work() {
        let mut shards = timeline(4, 100, |i| i as f64, 1.0, 0.1, 10.0);
        shards.extend(timeline(4, 100, |i| 10.0 + i as f64, 100.0, 0.0, 10.0));
        let e = at(&shards, 10.0, None);
        assert_eq!(e.rows_left, 400);
        // Marked dead (finished) but not folded yet: no rows left for it.
        shards[5].finished_at = Some(10.0);
        assert_eq!(at(&shards, 10.0, None).rows_left, 300);
    }

    #[test]
    fn big_shards_far_apart_do_not_swing_the_eta() {
        // A shard of 60,000 rows every 20 s: 3,000 rows/s.
        let t0 = 0.0;
        let make = |now: f64| timeline(60, 60_000, |i| t0 + i as f64 * 20.0, 20.0, 0.1, now);
        let just_after = at(&make(400.2), 400.2, None);
        let just_before = at(&make(419.9), 419.9, None);
        let (a, b) = (secs(&just_after), secs(&just_before));
        // 40 shards left; the truth goes from 800 s to 780 s.
        assert!(near(a, 800.0, 0.15), "{a}");
        assert!(near(b, 780.0, 0.3), "{b}");
        assert!(
            b / a < 1.3,
            "between completions the ETA moves by < 30 %: {a} → {b}"
        );
    }

    #[test]
    fn the_half_life_follows_the_gap_between_completions() {
        let frequent: Vec<f64> = (0..100).map(|i| i as f64 * 0.5).collect();
        assert_eq!(half_life(&frequent), HALF_LIFE_SECONDS);
        let sparse: Vec<f64> = (0..100).map(|i| i as f64 * 20.0).collect();
        assert_eq!(half_life(&sparse), 80.0);
        assert_eq!(half_life(&[]), HALF_LIFE_SECONDS);
        assert_eq!(half_life(&[3.0]), HALF_LIFE_SECONDS);
    }

    #[test]
    fn degenerate_windows_give_no_rate() {
        assert_eq!(decayed_rate(&[], 0.0, 10.0), 0.0);
        assert_eq!(decayed_rate(&[(1.0, 5.0)], 10.0, 10.0), 0.0);
        assert_eq!(decayed_rate(&[(1.0, 5.0)], f64::INFINITY, 10.0), 0.0);
        // A window far shorter than the half-life is a plain average.
        let r = decayed_rate(&[(1.0, 5.0), (2.0, 5.0)], 0.0, 2.0);
        assert!(near(r, 5.0, 0.05), "{r}");
    }
}
