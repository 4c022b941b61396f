//! What a sampled dry run (`--sample`) says about the full run: the share
//! of rows that would change, the rows and bytes a commit would write, and
//! how long the full dry run would take at the measured rate.

use crate::tally::Tally;

/// The estimate printed before a sampled dry run's report. `fraction` is
/// the share of the rows the sample read (0–1], `secs` how long it took.
pub fn sample_estimate(t: &Tally, fraction: f64, secs: f64) -> String {
    let c = &t.counts;
    let scale = 1.0 / fraction;
    let read = c.processed.saturating_sub(c.skipped).max(1);
    let share = c.changed as f64 / read as f64;
    let full_rows = c.processed as f64 * scale;
    let rate = c.processed as f64 / secs.max(1e-9);
    let eta = full_rows / rate.max(1e-9);
    format!(
        "Estimate from a {:.3}% sample ({} rows read; about {:.0} rows in the full scope):\n  \
         rows that would change: {:.1}% (about {:.0} rows)\n  \
         bytes to write: about {:.0} (rewritten columns), plus about {:.0} of before-images\n  \
         ETA of the full dry run at the measured {:.0} rows/s: about {:.0} s\n",
        fraction * 100.0,
        c.processed,
        full_rows,
        share * 100.0,
        c.changed as f64 * scale,
        t.bytes_written as f64 * scale,
        t.bytes_before as f64 * scale,
        rate,
        eta
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ten_percent_sample_scales_by_ten() {
        let mut t = Tally::default();
        t.counts.processed = 100;
        t.counts.changed = 25;
        t.counts.skipped = 0;
        t.bytes_written = 1_000;
        t.bytes_before = 2_000;
        let e = sample_estimate(&t, 0.1, 2.0);
        assert!(e.starts_with("Estimate from a 10.000% sample (100 rows read; about 1000 rows in the full scope):\n"), "{e}");
        assert!(
            e.contains("rows that would change: 25.0% (about 250 rows)"),
            "{e}"
        );
        assert!(e.contains("bytes to write: about 10000 (rewritten columns), plus about 20000 of before-images"), "{e}");
        assert!(e.contains("at the measured 50 rows/s: about 20 s"), "{e}");
    }

    #[test]
    fn skipped_rows_are_not_in_the_share_and_nothing_divides_by_zero() {
        let mut t = Tally::default();
        t.counts.processed = 10;
        t.counts.skipped = 10;
        let e = sample_estimate(&t, 1.0, 0.0);
        assert!(e.contains("rows that would change: 0.0%"), "{e}");
        assert!(!e.contains("NaN") && !e.contains("inf"), "{e}");
        let e = sample_estimate(&Tally::default(), 0.5, 1.0);
        assert!(!e.contains("NaN") && !e.contains("inf"), "{e}");
    }
}
