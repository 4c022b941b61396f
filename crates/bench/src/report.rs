//! The printed results: one line per contender as it finishes, the table,
//! the targets, and the checksum verdict (the line the test reads:
//! `checksums: match …` or `checksums: MISMATCH …`).

use crate::db::Baseline;
use crate::{Contender, Options, Outcome};

fn mib(b: i64) -> f64 {
    b as f64 / (1u64 << 20) as f64
}

fn rate(o: &Outcome) -> f64 {
    o.rows as f64 / o.wall.as_secs_f64().max(1e-9)
}

fn rss_text(o: &Outcome) -> String {
    if o.rss.is_empty() {
        return "-".into();
    }
    let get = |role: &str| {
        o.rss
            .iter()
            .filter(|(r, _)| r.starts_with(role))
            .map(|(_, k)| format!("{:.0}", *k as f64 / 1024.0))
            .collect::<Vec<_>>()
            .join("/")
    };
    format!(
        "coord {} · red {} · map {}",
        get("coordinator"),
        get("reducer"),
        get("mapper")
    )
}

/// The line printed as a contender finishes.
pub fn one_line(o: &Outcome, _b: &Baseline) -> String {
    format!(
        "   {}: {:.2} s, {} rows ({} changed), {:.0} rows/s, DB +{:.1} MiB{}, peak RSS MiB: {}, checksum {}",
        o.contender.label(),
        o.wall.as_secs_f64(),
        o.rows,
        o.changed,
        rate(o),
        mib(o.growth_bytes),
        o.before_image_bytes
            .map(|b| format!(" (before-images {:.1} MiB, ledger {:.1} MiB)", mib(b), mib(o.ledger_bytes.unwrap_or(0))))
            .unwrap_or_default(),
        rss_text(o),
        o.checksum
    )
}

/// The results table (Markdown, so BENCHMARKS.md can hold it as printed).
pub fn table(outcomes: &[Outcome], b: &Baseline, opts: &Options) -> String {
    let limit = outcomes
        .iter()
        .find(|o| o.contender == Contender::Limit)
        .map(rate);
    let mut s = String::new();
    s.push_str(&format!(
        "Results: {} revisions ({} programs, seed {}), {} target rows of which {} change; documents mean {:.0} B (p5 {:.0}, p95 {:.0}); shard size {}; mapper --concurrency {}\n\n",
        b.revisions,
        opts.programs,
        opts.seed,
        b.target_rows,
        b.would_change,
        b.doc_mean,
        b.doc_p5,
        b.doc_p95,
        opts.shard_size.map(|n| n.to_string()).unwrap_or_else(|| "500 (spec)".into()),
        opts.concurrency,
    ));
    s.push_str("| contender | wall s | map s | reduce lag s | rows | changed | rows/s | × limit | DB growth MiB | of which before-images MiB | peak RSS MiB |\n");
    s.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n");
    for o in outcomes {
        let (map, lag) = o.phases.map_or(("-".into(), "-".into()), |(m, l)| {
            (format!("{m:.2}"), format!("{l:.2}"))
        });
        s.push_str(&format!(
            "| {} | {:.2} | {map} | {lag} | {} | {} | {:.0} | {} | {:.1} | {} | {} |\n",
            o.contender.label(),
            o.wall.as_secs_f64(),
            o.rows,
            o.changed,
            rate(o),
            limit
                .map(|l| format!("{:.2}", rate(o) / l.max(1e-9)))
                .unwrap_or_else(|| "-".into()),
            mib(o.growth_bytes),
            o.before_image_bytes
                .map(|x| format!("{:.1}", mib(x)))
                .unwrap_or_else(|| "-".into()),
            rss_text(o),
        ));
    }
    s.push('\n');
    for l in targets(outcomes) {
        s.push_str(&l);
        s.push('\n');
    }
    s
}

/// The targets, as far as this run can tell.
pub fn targets(outcomes: &[Outcome]) -> Vec<String> {
    let find = |c: Contender| outcomes.iter().find(|o| o.contender == c).map(rate);
    let mark = |ok: bool| if ok { "met" } else { "NOT met" };
    let mut out = Vec::new();
    let limit = find(Contender::Limit);
    let per_row = find(Contender::PerRow);
    for o in outcomes {
        if let Contender::Commit(n) = o.contender {
            let r = rate(o);
            if let Some(l) = limit {
                let x = r / l.max(1e-9);
                out.push(format!(
                    "target: commit ({n} mapper{}) ≥ 0.6 × limit: {x:.2} × — {}",
                    if n == 1 { "" } else { "s" },
                    mark(x >= 0.6)
                ));
            }
            if let Some(p) = per_row {
                let x = r / p.max(1e-9);
                out.push(format!(
                    "target: commit ({n} mapper{}) ≥ 20 × per-row: {x:.1} × — {}",
                    if n == 1 { "" } else { "s" },
                    mark(x >= 20.0)
                ));
            }
        }
        if let (true, Some((_, lag))) = (o.contender.is_backfill(), o.phases) {
            out.push(format!(
                "target: {} reduce lag ≤ 2 s: {lag:.2} s — {}",
                o.contender.label(),
                mark(lag <= 2.0)
            ));
        }
        if let (Contender::Commit(n), Some(l)) = (o.contender, limit) {
            // Rules applied by the database, against the one statement.
            let need = if n >= 2 { 1.2 } else { 0.9 };
            let x = rate(o) / l.max(1e-9);
            out.push(format!(
                "target: commit with the rules in the database ({n} mapper{}) ≥ {need} × limit: {x:.2} × — {}",
                if n == 1 { "" } else { "s" },
                mark(x >= need)
            ));
            if let Some(rw) = find(Contender::CommitRw(n)) {
                out.push(format!(
                    "commit ({n} mapper{}): rules in the database {:.2} × the read-rewrite-write path",
                    if n == 1 { "" } else { "s" },
                    rate(o) / rw.max(1e-9)
                ));
            }
        }
        if let (Contender::DryRun(_), Some(l)) = (o.contender, limit) {
            let x = rate(o) / l.max(1e-9);
            out.push(format!(
                "target: dry-run ≥ 2 × limit: {x:.2} × — {}",
                mark(x >= 2.0)
            ));
        }
        if let Contender::DryRun(n) = o.contender {
            if let Some(c) = find(Contender::Commit(n)) {
                let x = rate(o) / c.max(1e-9);
                out.push(format!(
                    "target: dry-run ≥ 1.5 × commit ({n} mappers each): {x:.2} × — {}",
                    mark(x >= 1.5)
                ));
            }
        }
    }
    let peak = |role: &str| {
        outcomes
            .iter()
            .flat_map(|o| o.rss.iter())
            .filter(|(r, _)| r.starts_with(role))
            .map(|(_, k)| *k)
            .max()
    };
    if let Some(m) = peak("mapper") {
        out.push(format!(
            "target: mapper peak RSS ≤ 64 MiB: {:.1} MiB — {}",
            m as f64 / 1024.0,
            mark(m <= 64 * 1024)
        ));
    }
    if let Some(r) = peak("reducer") {
        out.push(format!(
            "target: reducer peak RSS ≤ 64 MiB: {:.1} MiB — {}",
            r as f64 / 1024.0,
            mark(r <= 64 * 1024)
        ));
    }
    if let Some(c) = peak("coordinator") {
        out.push(format!(
            "target: coordinator peak RSS ≤ 64 MiB: {:.1} MiB — {}",
            c as f64 / 1024.0,
            mark(c <= 64 * 1024)
        ));
    }
    out
}

/// Whether every contender produced the database it should have.
pub struct Verdict {
    pub ok: bool,
    pub line: String,
}

/// Commit contenders must agree with each other (and differ from the
/// original when anything changes), write exactly the rows that change, and
/// the dry run must leave the original checksum.
pub fn verdict(outcomes: &[Outcome], b: &Baseline) -> Verdict {
    let mut problems = Vec::new();
    let writers: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| !o.contender.is_dry_run())
        .collect();
    if let Some(first) = writers.first() {
        for o in &writers {
            if o.checksum != first.checksum {
                problems.push(format!(
                    "{} ended with {} but {} with {}",
                    o.contender.label(),
                    o.checksum,
                    first.contender.label(),
                    first.checksum
                ));
            }
        }
        if b.would_change > 0 && first.checksum == b.checksum {
            problems.push(format!(
                "{} left the database as generated",
                first.contender.label()
            ));
        }
    }
    for o in outcomes {
        if o.changed != b.would_change {
            problems.push(format!(
                "{} changed {} rows; {} should change",
                o.contender.label(),
                o.changed,
                b.would_change
            ));
        }
        if o.contender.is_backfill() && o.rows != b.target_rows {
            problems.push(format!(
                "{} processed {} rows; the job has {}",
                o.contender.label(),
                o.rows,
                b.target_rows
            ));
        }
        if o.contender.is_dry_run() && o.checksum != b.checksum {
            problems.push(format!(
                "{} changed the database ({} → {})",
                o.contender.label(),
                b.checksum,
                o.checksum
            ));
        }
    }
    if problems.is_empty() {
        let written = writers
            .first()
            .map(|o| o.checksum.clone())
            .unwrap_or_else(|| "-".into());
        Verdict {
            ok: true,
            line: format!(
                "checksums: match ({} writing contenders → {written}; dry runs left {}; {} rows changed by each)",
                writers.len(),
                b.checksum,
                b.would_change
            ),
        }
    } else {
        Verdict {
            ok: false,
            line: format!("checksums: MISMATCH: {}", problems.join("; ")),
        }
    }
}
